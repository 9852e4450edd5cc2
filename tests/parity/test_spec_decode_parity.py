"""Speculative decoding with the n-gram drafter against transformers' greedy output (tiny shapes, CPU).

The prompts repeat a pattern so prompt lookup proposes drafts; the tiny random models follow some of
them and not others, and the counters must show both, so the verify path keeps drafts and rolls
rejected ones back in the same run. Small pages (4 tokens, sliding window 8) make the rollback cross
page boundaries and the sliding pool reclaim pages while drafts come and go.
"""

from __future__ import annotations

import random

import pytest

from gemma_runtime.api import GenerateRequest, SamplingParams
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine
from tests.parity.conftest import hf_greedy, run_joining
from tests.recorded import recorded_calls

NEW_TOKENS = 40


def repeating_prompt(pattern_len: int, repeats: int, seed: int, vocab: int) -> list[int]:
    rng = random.Random(seed)
    pattern = [rng.randrange(10, vocab) for _ in range(pattern_len)]
    return pattern * repeats + pattern[: pattern_len // 2]


def greedy() -> SamplingParams:
    return SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)


def assert_some_kept_some_rejected(engine: LLMEngine) -> None:
    stats = engine.stats()
    assert stats.spec_decode_drafted > stats.spec_decode_accepted > 0, stats


@pytest.mark.parametrize("graph_max", [0, 4], ids=["eager", "verify-buffers"])
def test_ngram_concurrent_requests_match_transformers(tiny, graph_max):
    """graph_max 4: decode and verify steps through the padded buffers of the CUDA graphs (run eagerly here)."""
    _, _, engine_dir, hf = tiny
    config = RuntimeConfig(
        block_size=4,
        max_num_batched_tokens=12,
        speculative="ngram",
        num_speculative_tokens=3,
        decode_graph_max_batch=graph_max,
    )
    engine = LLMEngine(engine_dir, config)
    verified = recorded_calls(engine.runner.verify_graphs)  # (batch, query_lens) per padded verify step
    free_at_start = engine.blocks.num_free
    vocab = engine.spec.text.vocab_size
    prompts = {f"r{i}": repeating_prompt(n, 3, seed=30 + i, vocab=vocab) for i, n in enumerate([3, 7, 5, 9])}
    join_at = {"r0": 0, "r1": 2, "r2": 5, "r3": 9}  # r2 and r3 prefill while the others verify drafts
    got = run_joining(engine, prompts, join_at, greedy())
    for rid, prompt in prompts.items():
        assert got[rid] == hf_greedy(hf, prompt, NEW_TOKENS), rid
    assert_some_kept_some_rejected(engine)
    assert (graph_max > 0) == any(max(lens) > 1 for _, lens in verified)
    assert engine.blocks.num_free == free_at_start


@pytest.mark.parametrize("graph_max", [0, 4], ids=["eager", "verify-buffers"])
def test_ngram_through_preemption(tiny, graph_max):
    _, _, engine_dir, hf = tiny
    config = RuntimeConfig(
        block_size=4,
        num_full_blocks=36,
        max_num_batched_tokens=16,
        max_model_len=128,
        speculative="ngram",
        num_speculative_tokens=4,
        decode_graph_max_batch=graph_max,
    )
    engine = LLMEngine(engine_dir, config)
    verified = recorded_calls(engine.runner.verify_graphs)  # (batch, query_lens) per padded verify step
    free_at_start = engine.blocks.num_free
    vocab = engine.spec.text.vocab_size
    prompts = {f"p{i}": repeating_prompt(6 + i, 4, seed=40 + i, vocab=vocab) for i in range(3)}
    seqs = []
    for rid, prompt in prompts.items():
        engine.add_request(GenerateRequest(rid, prompt, greedy()))
        seqs.append(engine.requests[rid].seq)
    got: dict[str, list[int]] = {rid: [] for rid in prompts}
    while engine.has_unfinished():
        for out in engine.step():
            got[out.request_id].extend(out.token_ids)
    assert sum(s.num_preemptions for s in seqs) > 0, "the pool was meant to be too small for all three"
    for rid, prompt in prompts.items():
        assert got[rid] == hf_greedy(hf, prompt, NEW_TOKENS), rid
    assert_some_kept_some_rejected(engine)
    assert (graph_max > 0) == any(max(lens) > 1 for _, lens in verified)
    assert engine.blocks.num_free == free_at_start
