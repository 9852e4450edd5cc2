"""The MTP drafter's rounds through their padded buffers (speculative/mtp_graphs.py) draft what the
drafter drafts eagerly: padding sequences change no real sequence's drafts, a round of N steps gives
the first drafts of a shorter one, a round needing a shorter window runs eagerly, and engines with the
buffers give the tokens of engines without them.

On the CPU the buffers run eagerly (capture needs CUDA); tests/gpu/test_padded_step_graphs.py checks capture."""

from __future__ import annotations

from dataclasses import replace

import torch

from gemma_runtime.api import GenerateRequest, SamplingParams
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine
from gemma_runtime.speculative.protocol import DraftRequest
from tests.recorded import recorded_calls

PROMPTS = [
    "red green blue yellow " * 5,
    "The quick brown fox jumps over the lazy dog near the river bank, twice.",
    "one two three one two three one two three one two",
]


def engine_for(engine_dir, **kw) -> LLMEngine:
    base = dict(block_size=4, max_model_len=256, speculative="mtp", num_speculative_tokens=3)
    return LLMEngine(engine_dir, RuntimeConfig(**{**base, **kw}))


def draft_requests(engine: LLMEngine, max_tokens: int) -> list[DraftRequest]:
    """The running sequences, prefilled, as the engine would ask the drafter about them."""
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(GenerateRequest(f"r{i}", prompt, SamplingParams(max_tokens=20, ignore_eos=True)))
    engine.speculation.max_batch = 0  # the engine's own steps draft nothing here
    while any(not s.output_token_ids for s in engine.scheduler.running) or len(engine.scheduler.running) < 3:
        engine.step()
    return [
        DraftRequest(
            s.request_id,
            s.token_ids,
            s.num_tokens - 1,
            max_tokens,
            engine.runner.hidden_of(s),
            s.block_tables,
            s.sampling,
        )
        for s in engine.scheduler.running
    ]


@torch.inference_mode()
def test_padded_rounds_draft_what_the_eager_drafter_drafts(random_tiny_mtp_engine_dir):
    engine = engine_for(random_tiny_mtp_engine_dir, decode_graph_max_batch=4)
    drafter = engine.speculation.drafter
    graphs = drafter.graphs
    assert graphs is not None and graphs.batch_sizes == [1, 2, 4] and graphs.num_tokens == 3
    requests = draft_requests(engine, max_tokens=3)
    padded = [d.token_ids for d in drafter.propose(requests)]  # 3 sequences in the size-4 buffers
    drafter.graphs = None
    eager = [d.token_ids for d in drafter.propose(requests)]
    assert padded == eager and all(len(d) == 3 for d in padded)
    # two drafts allowed: the round still runs 3 steps in the buffers; the first two are the eager ones
    drafter.graphs = graphs
    short = [replace(r, max_tokens=2) for r in requests]
    assert [d.token_ids for d in drafter.propose(short)] == [d[:2] for d in eager]
    # a round whose sequences need a shorter window than the drafter's own runs eagerly
    assert graphs.fits(3, graphs.window) and not graphs.fits(3, graphs.window - 1) and not graphs.fits(5, graphs.window)


def test_engines_with_draft_buffers_give_the_same_tokens(random_tiny_mtp_engine_dir):
    kw = dict(max_num_batched_tokens=24)
    plain = engine_for(random_tiny_mtp_engine_dir, **kw)
    padded = engine_for(random_tiny_mtp_engine_dir, decode_graph_max_batch=4, **kw)
    rounds = recorded_calls(padded.speculation.drafter.graphs)
    requests = lambda: [  # noqa: E731
        GenerateRequest(f"r{i}", p, SamplingParams(max_tokens=12, ignore_eos=True)) for i, p in enumerate(PROMPTS)
    ]
    assert padded.generate(requests()) == plain.generate(requests())
    assert rounds and padded.stats().spec_decode_drafted > 0
