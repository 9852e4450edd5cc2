"""The scheduler's token budget: no step computes more than `max_num_batched_tokens` tokens (the budget
also sizes the sliding page pool, so one token over can run it dry), a step uses the whole budget while
work is waiting, and a long prompt is split into budget-sized chunks that never end inside an image.

The steps are driven as the engine drives them: computed tokens advance, a sequence whose prompt is
complete gets one sampled token, and it leaves after a few.
"""

from __future__ import annotations

import random

import pytest

from gemma_runtime.api import SamplingParams
from gemma_runtime.scheduling.block_manager import BlockManager
from gemma_runtime.scheduling.scheduler import Scheduler
from gemma_runtime.scheduling.sequence import ImageSpan, Sequence

BLOCK = 4


def make_scheduler(budget: int, max_num_seqs: int = 8, blocks: int = 4000, window: int = 8) -> Scheduler:
    return Scheduler(BlockManager(BLOCK, blocks, blocks, window), max_num_seqs, budget)


def seq(name: str, prompt_len: int, spans=()) -> Sequence:
    return Sequence(
        name,
        list(range(3, 3 + prompt_len)),
        SamplingParams(max_tokens=4),
        frozenset(),
        image_spans=[ImageSpan(a, b) for a, b in spans],
    )


def run_step(s: Scheduler, outputs_per_seq: int = 3) -> list[tuple[str, int]]:
    """One step as the engine runs it; returns (request id, tokens computed) per scheduled sequence."""
    plan = s.schedule()
    for item in plan.scheduled:
        done_prompt = item.completes_prompt
        item.seq.num_computed += item.num_new
        if done_prompt:
            item.seq.output_token_ids.append(7)  # the token sampled from this step's last row
            if len(item.seq.output_token_ids) >= outputs_per_seq:
                s.remove(item.seq)
    return [(item.seq.request_id, item.num_new) for item in plan.scheduled]


def uncomputed(s: Scheduler) -> int:
    return sum(q.num_tokens - q.num_computed for q in list(s.running) + list(s.waiting))


@pytest.mark.parametrize("budget", [1, 3, 7, 16])
def test_no_step_exceeds_the_budget_and_full_steps_use_all_of_it(budget):
    rng = random.Random(budget)
    s = make_scheduler(budget)
    for i in range(12):
        s.add(seq(f"r{i}", rng.randint(1, 3 * budget + 5)))
    steps = 0
    while s.has_work():
        ready = uncomputed(s)
        batch = run_step(s)
        total = sum(n for _, n in batch)
        assert 0 < total <= budget, f"step {steps}: {batch}"
        # Nothing but the budget (sequence cap and pages are ample here) keeps work out of a step:
        # it takes everything there is, or exactly the budget.
        if len(batch) < s.max_num_seqs:
            assert total == min(budget, ready), f"step {steps}: {batch}, {ready} tokens ready"
        steps += 1
        assert steps < 1000


@pytest.mark.parametrize(
    "prompt_len,budget,chunks",
    [
        (10, 4, [4, 4, 2]),
        (8, 4, [4, 4]),
        (9, 4, [4, 4, 1]),
        (5, 5, [5]),
        (6, 5, [5, 1]),
        (3, 1, [1, 1, 1]),
    ],
)
def test_a_long_prompt_is_split_into_budget_sized_chunks(prompt_len, budget, chunks):
    s = make_scheduler(budget)
    s.add(seq("a", prompt_len))
    got = []
    while not s.running or s.running[0].output_token_ids == []:
        got.append(run_step(s)[0][1])
    assert got == chunks


def test_decodes_come_first_and_a_prefill_takes_the_rest_of_the_budget():
    s = make_scheduler(budget=6)
    s.add(seq("short", 2))
    assert run_step(s, outputs_per_seq=99) == [("short", 2)]
    s.add(seq("long", 20))
    assert run_step(s, outputs_per_seq=99) == [("short", 1), ("long", 5)]
    assert run_step(s, outputs_per_seq=99) == [("short", 1), ("long", 5)]


def test_chunks_never_end_inside_an_image_span():
    """Image tokens attend to each other, so a span is computed whole: a chunk stops before it, or, when
    the span starts the chunk, runs past the budget to its end (the pool is sized for one image too)."""
    s = make_scheduler(budget=4)
    s.add(seq("img", 14, spans=[(2, 9)]))  # tokens 2..8 are one image
    got = []
    while not s.running or s.running[0].output_token_ids == []:
        got.append(run_step(s)[0][1])
    assert got == [2, 7, 4, 1]


def test_the_sequence_cap_holds_back_waiting_work():
    s = make_scheduler(budget=64, max_num_seqs=2)
    for i in range(4):
        s.add(seq(f"r{i}", 3))
    assert [name for name, _ in run_step(s, outputs_per_seq=99)] == ["r0", "r1"]
    assert len(s.waiting) == 2
