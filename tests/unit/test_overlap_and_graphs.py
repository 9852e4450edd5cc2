"""Overlapped scheduling and padded decode graphs change when the host does its work, never what a
request gets: every output (tokens, text, finish reason, logprobs) must equal the plain synchronous
engine's, under arrivals at different steps, stops of every kind, preemption and aborts.

On the CPU the decode "graphs" run their padded static buffers eagerly (capture needs CUDA); the
buffers, the padding rows and the scratch page are what these tests check. tests/gpu checks capture.
"""

from __future__ import annotations

import pytest
import torch

from gemma_runtime.api import GenerateRequest, RequestOutput, SamplingParams
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine
from gemma_runtime.executor.decode_graphs import graph_batch_sizes
from gemma_runtime.scheduling.scheduler import ScheduledSeq

PROMPTS = [
    "<bos><|turn>user\nTell me a story about the sea.<turn|>\n<|turn>model\n",
    "The quick brown fox jumps over the lazy dog near the river bank, twice.",
    "Hi",
    "Numbers: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
]
MODES = {
    "overlap": dict(overlap_scheduling=True),
    "graphs": dict(decode_graph_max_batch=8),
    "overlap+graphs": dict(overlap_scheduling=True, decode_graph_max_batch=8),
}


def engine_for(engine_dir, **kwargs) -> LLMEngine:
    return LLMEngine(engine_dir, RuntimeConfig(block_size=4, max_model_len=256, **kwargs))


def workload(engine: LLMEngine) -> list[tuple[int, GenerateRequest]]:
    """(arrival step, request): greedy and seeded sampling, every kind of stop, logprobs, penalties."""
    stop_id = engine.tokenizer.encode("e", add_special_tokens=False)[0]
    p = SamplingParams
    return [
        (0, GenerateRequest("greedy", PROMPTS[0], p(max_tokens=30, ignore_eos=True))),
        (
            0,
            GenerateRequest(
                "seeded", PROMPTS[1], p(max_tokens=25, temperature=0.9, top_k=40, top_p=0.9, seed=3, ignore_eos=True)
            ),
        ),
        (
            1,
            GenerateRequest(
                "stop-token", PROMPTS[2], p(max_tokens=40, temperature=1.0, seed=11, stop_token_ids=(stop_id,))
            ),
        ),
        (
            2,
            GenerateRequest(
                "min-tokens",
                PROMPTS[2],
                p(max_tokens=40, temperature=1.0, seed=11, min_tokens=6, stop_token_ids=(stop_id,)),
            ),
        ),
        (
            3,
            GenerateRequest(
                "stop-string", PROMPTS[3], p(max_tokens=40, temperature=0.7, seed=5, stop=("e ", "a"), ignore_eos=True)
            ),
        ),
        (3, GenerateRequest("one-token", PROMPTS[1], p(max_tokens=1))),
        (5, GenerateRequest("logprobs", PROMPTS[3], p(max_tokens=12, logprobs=3, ignore_eos=True))),
        (
            6,
            GenerateRequest(
                "penalties", PROMPTS[0], p(max_tokens=20, frequency_penalty=0.8, presence_penalty=0.5, ignore_eos=True)
            ),
        ),
        (
            8,
            GenerateRequest("late", PROMPTS[1], p(max_tokens=15, temperature=1.2, min_p=0.05, seed=9, ignore_eos=True)),
        ),
    ]


def run_workload(
    engine: LLMEngine, abort: tuple[str, int] | None = None, without: tuple[str, ...] = ()
) -> dict[str, list[RequestOutput]]:
    """Adds each request at its arrival step, optionally aborts one at a step, runs everything out."""
    pending = [(step, r) for step, r in workload(engine) if r.request_id not in without]
    outputs: dict[str, list[RequestOutput]] = {r.request_id: [] for _, r in pending}
    step = 0
    while pending or engine.has_unfinished():
        for arrival, request in [x for x in pending if x[0] <= step]:
            engine.add_request(request)
            pending.remove((arrival, request))
        if abort is not None and step == abort[1]:
            out = engine.abort(abort[0])
            if out is not None:
                outputs[abort[0]].append(out)
        for out in engine.step():
            outputs[out.request_id].append(out)
        step += 1
    return outputs


def summary(outputs: dict[str, list[RequestOutput]]) -> dict[str, tuple]:
    """Per request: tokens, text, finish and stop reason, usage, then the logprobs as (token, value,
    top ids, top values). Padding changes the batch's float rounding (1e-6), never a token."""

    def logprobs(outs):
        return tuple(
            (lp.token_id, lp.logprob, tuple(t for t, _ in lp.top), tuple(v for _, v in lp.top))
            for o in outs
            for lp in (o.logprobs or ())
        )

    return {
        rid: (
            tuple(t for o in outs for t in o.token_ids),
            "".join(o.text for o in outs),
            outs[-1].finish_reason,
            outs[-1].stop_reason,
            outs[-1].usage,
            logprobs(outs),
        )
        for rid, outs in outputs.items()
    }


def assert_same(got: dict[str, tuple], want: dict[str, tuple]) -> None:
    assert got.keys() == want.keys()
    for rid in want:
        assert got[rid][:5] == want[rid][:5], rid
        assert len(got[rid][5]) == len(want[rid][5]), rid
        for (t, v, ids, vals), (t0, v0, ids0, vals0) in zip(got[rid][5], want[rid][5]):
            assert (
                (t, ids) == (t0, ids0) and v == pytest.approx(v0, abs=1e-4) and vals == pytest.approx(vals0, abs=1e-4)
            )


@pytest.fixture(scope="module")
def reference(random_tiny_engine_dir):
    engine = engine_for(random_tiny_engine_dir)
    return summary(run_workload(engine))


@pytest.mark.parametrize("mode", MODES)
def test_outputs_equal_the_synchronous_engine(random_tiny_engine_dir, reference, mode):
    engine = engine_for(random_tiny_engine_dir, **MODES[mode])
    free = engine.stats().kv_blocks_free
    got = summary(run_workload(engine))
    assert_same(got, reference)
    # the workload really exercised what it is meant to: every kind of finish, and batches above one
    assert {v[2] for v in got.values()} == {"length", "stop"}
    assert engine.stats().kv_blocks_free == free and not engine.requests and engine.in_flight is None


def test_workload_has_a_stop_inside_min_tokens(reference):
    tokens, _, reason, *_ = reference["min-tokens"]
    assert reason == "stop" or len(tokens) == 40
    assert len(tokens) > 6


@pytest.mark.parametrize("mode", ["overlap", "overlap+graphs"])
def test_preemption_under_overlap(random_tiny_engine_dir, mode):
    """Few full-layer pages: sequences are preempted (some with a token still pending) and recomputed.
    Prefix caching off: its shared pages spare this workload every preemption (the parity tests preempt
    with shared pages)."""
    tight = dict(num_full_blocks=40, max_num_batched_tokens=32, enable_prefix_caching=False)
    ref = engine_for(random_tiny_engine_dir, **tight)
    want = summary(run_workload(ref))
    engine = engine_for(random_tiny_engine_dir, **tight, **MODES[mode])
    assert_same(summary(run_workload(engine)), want)
    assert engine.stats().kv_blocks_free == engine.stats().kv_blocks_total


def test_preemption_really_happens_with_the_tight_pool(random_tiny_engine_dir, monkeypatch):
    """Guards the test above: with 40 full pages this workload does preempt, also while tokens are pending.
    (Without the penalties request: while it runs, each step's tokens are read before the next is
    scheduled, as its penalties need them, so nothing is pending when the scheduler preempts.)"""
    engine = engine_for(
        random_tiny_engine_dir,
        num_full_blocks=40,
        max_num_batched_tokens=32,
        overlap_scheduling=True,
        enable_prefix_caching=False,
    )
    seen = []
    real = engine.scheduler._preempt
    monkeypatch.setattr(
        engine.scheduler, "_preempt", lambda seq: (seen.append((seq.request_id, seq.num_pending)), real(seq))
    )
    run_workload(engine, without=("penalties",))
    assert seen, "no preemption: the tight pool no longer tests anything"
    assert any(pending for _, pending in seen), "no sequence was preempted with a token still on the device"


@pytest.mark.parametrize("mode", ["overlap", "overlap+graphs"])
def test_abort_while_a_step_is_in_flight(random_tiny_engine_dir, reference, mode):
    engine = engine_for(random_tiny_engine_dir, **MODES[mode])
    outputs = run_workload(engine, abort=("greedy", 6))
    got = summary(outputs)
    assert got["greedy"][2] == "abort"
    # the aborted request's tokens up to the abort are a prefix of its full output; nothing after it
    assert reference["greedy"][0][: len(got["greedy"][0])] == got["greedy"][0]
    assert sum(o.finished for o in outputs["greedy"]) == 1 and outputs["greedy"][-1].finished
    assert_same({k: v for k, v in got.items() if k != "greedy"}, {k: v for k, v in reference.items() if k != "greedy"})
    assert engine.stats().kv_blocks_free == engine.stats().kv_blocks_total


def test_length_limit_is_not_scheduled_again_while_pending(random_tiny_engine_dir):
    """A sequence whose pending token reaches max_tokens is not decoded once more (no wasted step)."""
    engine = engine_for(random_tiny_engine_dir, overlap_scheduling=True)
    launched = []
    real = engine.runner.launch
    engine.runner.launch = lambda scheduled: (launched.append([s.seq.request_id for s in scheduled]), real(scheduled))[
        1
    ]
    engine.generate([GenerateRequest("a", PROMPTS[2], SamplingParams(max_tokens=3, ignore_eos=True))])
    assert launched == [["a"]] * 3  # prefill + 2 decodes for 3 tokens


def test_graph_batch_sizes():
    assert graph_batch_sizes(64) == [1, 2, 4, 8, 16, 32, 48, 64]
    assert graph_batch_sizes(5) == [1, 2, 4, 5]
    assert graph_batch_sizes(1) == [1]
    assert graph_batch_sizes(40) == [1, 2, 4, 8, 16, 32, 40]


@torch.inference_mode()
def test_padded_decode_matches_the_plain_forward(random_tiny_engine_dir):
    """Three sequences decoded through the size-4 buffers (one padding row writing to the scratch page)
    give the hidden states of the plain forward, and leave every sequence's cache as the plain one does."""
    engine = engine_for(random_tiny_engine_dir, decode_graph_max_batch=8)
    requests = [
        GenerateRequest(f"r{i}", p, SamplingParams(max_tokens=4, ignore_eos=True)) for i, p in enumerate(PROMPTS[:3])
    ]
    for r in requests:
        engine.add_request(r)
    for _ in range(3):  # prefills and a decode, so every sequence is mid-decode
        engine.step()
    scheduled = [ScheduledSeq(s, 1) for s in engine.scheduler.running]
    for item in scheduled:
        engine.blocks.allocate(item.seq.block_tables, item.seq.num_computed, 1)
    runner = engine.runner
    batch = runner._build_batch(scheduled)
    assert batch.is_decode_only and runner.graphs.bucket(batch.num_seqs) == 4
    before = [(k.clone(), v.clone()) for k, v in runner.kv_caches]
    plain = runner.text.forward(batch, runner.kv_caches)
    plain_cache = [(k.clone(), v.clone()) for k, v in runner.kv_caches]
    scratch_rows = {kind: slice(page * 4, page * 4 + 4) for kind, page in runner.graphs.scratch_page.items()}
    for layer, ((k, v), (k0, v0)) in enumerate(zip(runner.kv_caches, before)):
        k.copy_(k0), v.copy_(v0)
        k[scratch_rows[engine.spec.text.layers[layer].type]] = 0.0  # so the padding row's write shows
    padded = runner.graphs.run(batch)
    torch.testing.assert_close(padded, plain, rtol=1e-5, atol=1e-5)
    for layer, ((k, v), (k1, v1)) in enumerate(zip(runner.kv_caches, plain_cache)):
        kind = engine.spec.text.layers[layer].type
        keep = torch.ones(k.shape[0], dtype=torch.bool)
        keep[scratch_rows[kind]] = False  # only the scratch page may differ: the padding row wrote there
        torch.testing.assert_close(k[keep], k1[keep], rtol=1e-5, atol=1e-5)  # rounding from the batch shape only
        torch.testing.assert_close(v[keep], v1[keep], rtol=1e-5, atol=1e-5)
        assert k[scratch_rows[kind]].abs().sum() > 0  # the padding row's K went there
