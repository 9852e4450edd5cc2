"""The runtime against Hugging Face transformers on tiny random Gemma 4 checkpoints (float32, CPU)."""

from __future__ import annotations

import random

import pytest
import torch

from gemma_runtime.api import GenerateRequest, SamplingParams
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine
from tests.parity.conftest import SLIDING_WINDOW, hf_greedy, run_joining
from tests.recorded import recorded_calls

NEW_TOKENS = 48


def random_prompt(n: int, seed: int, vocab: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, vocab) for _ in range(n)]


def greedy(max_tokens: int = NEW_TOKENS) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# the step graphs' padded buffers (run eagerly on the CPU): decode batches up to 4, prompts up to 16 tokens
GRAPHS = dict(decode_graph_max_batch=4, prefill_graph_max_tokens=16)


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "padded-buffers"])
def test_prefill_logits_match(tiny, graphs):
    """graphs: the last chunk (6 tokens) runs through the prefill buffers of 7 rows (the token budget)."""
    _, _, engine_dir, hf = tiny
    engine = LLMEngine(engine_dir, RuntimeConfig(block_size=4, max_num_batched_tokens=7, **(GRAPHS if graphs else {})))
    padded = recorded_calls(engine.runner.prefill_graphs)  # (batch, query_lens) per padded prefill
    prompt = random_prompt(20, seed=0, vocab=engine.spec.text.vocab_size)  # 3 chunks
    engine.add_request(GenerateRequest("r", prompt, SamplingParams(max_tokens=1, logprobs=5)))
    outputs = []
    while engine.has_unfinished():
        outputs += engine.step()
    (out,) = outputs
    with torch.inference_mode():
        ref = torch.log_softmax(hf(input_ids=torch.tensor([prompt])).logits[0, -1].float(), -1)
    ours = torch.tensor([lp for _, lp in out.logprobs[0].top])
    ref_top = torch.topk(ref, 5)
    assert [t for t, _ in out.logprobs[0].top] == ref_top.indices.tolist()
    assert rel_err(ours, ref_top.values) < 1e-4
    assert [lens for _, lens in padded] == ([[6]] if graphs else [])


def test_all_prefill_logits_match(tiny):
    """Every position's logits, not just the last: the model forward straight from a ForwardBatch."""
    _, _, engine_dir, hf = tiny
    engine = LLMEngine(engine_dir, RuntimeConfig(block_size=4))
    prompt = random_prompt(3 * SLIDING_WINDOW + 5, seed=3, vocab=engine.spec.text.vocab_size)
    from gemma_runtime.scheduling.scheduler import ScheduledSeq
    from gemma_runtime.scheduling.sequence import Sequence

    seq = Sequence("x", prompt, greedy(), frozenset())
    engine.blocks.allocate(seq.block_tables, 0, len(prompt))
    batch = engine.runner._build_batch([ScheduledSeq(seq, len(prompt))])
    batch.logits_indices = torch.arange(len(prompt))
    with torch.inference_mode():
        ours = engine.runner.text.logits(engine.runner.text.forward(batch, engine.runner.kv_caches))
        ref = hf(input_ids=torch.tensor([prompt])).logits[0].float()
    assert rel_err(ours, ref) < 1e-4


def test_greedy_long_prompt_crosses_the_window(tiny):
    _, _, engine_dir, hf = tiny
    engine = LLMEngine(engine_dir, RuntimeConfig(block_size=4, max_num_batched_tokens=16))
    prompt = random_prompt(5 * SLIDING_WINDOW + 3, seed=1, vocab=engine.spec.text.vocab_size)
    ours = engine.generate([GenerateRequest("long", prompt, greedy())])["long"]
    assert ours == hf_greedy(hf, prompt, NEW_TOKENS)


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "padded-buffers"])
def test_concurrent_requests_joining_at_different_steps(tiny, graphs):
    _, _, engine_dir, hf = tiny
    engine = LLMEngine(engine_dir, RuntimeConfig(block_size=4, max_num_batched_tokens=12, **(GRAPHS if graphs else {})))
    padded = recorded_calls(engine.runner.prefill_graphs)  # (batch, query_lens) per padded prefill
    free_at_start = engine.blocks.num_free
    vocab = engine.spec.text.vocab_size
    prompts = {f"r{i}": random_prompt(n, seed=10 + i, vocab=vocab) for i, n in enumerate([5, 23, 11, 37])}
    join_at = {"r0": 0, "r1": 2, "r2": 5, "r3": 9}
    got = run_joining(engine, prompts, join_at, greedy())
    for rid, prompt in prompts.items():
        assert got[rid] == hf_greedy(hf, prompt, NEW_TOKENS), rid
    assert engine.blocks.num_free == free_at_start
    assert bool(padded) == graphs  # r0's 5-token prompt, alone in its step


def test_preemption_and_resumption(tiny):
    _, _, engine_dir, hf = tiny
    # Few full-attention pages: three long requests cannot all hold their pages at once.
    config = RuntimeConfig(block_size=4, num_full_blocks=40, max_num_batched_tokens=16, max_model_len=128)
    engine = LLMEngine(engine_dir, config)
    free_at_start = engine.blocks.num_free
    vocab = engine.spec.text.vocab_size
    prompts = {f"p{i}": random_prompt(30 + 7 * i, seed=20 + i, vocab=vocab) for i in range(3)}
    requests = [GenerateRequest(rid, p, greedy()) for rid, p in prompts.items()]
    seqs = []
    for r in requests:
        engine.add_request(r)
        seqs.append(engine.requests[r.request_id].seq)
    got: dict[str, list[int]] = {rid: [] for rid in prompts}
    while engine.has_unfinished():
        for out in engine.step():
            got[out.request_id].extend(out.token_ids)
    assert sum(s.num_preemptions for s in seqs) > 0, "the pool was meant to be too small for all three"
    for rid, prompt in prompts.items():
        assert got[rid] == hf_greedy(hf, prompt, NEW_TOKENS), rid
    assert engine.blocks.num_free == free_at_start


def test_abort_gives_blocks_back(tiny):
    _, _, engine_dir, _ = tiny
    engine = LLMEngine(engine_dir, RuntimeConfig(block_size=4))
    free_at_start = engine.blocks.num_free
    vocab = engine.spec.text.vocab_size
    for i in range(3):
        engine.add_request(GenerateRequest(f"a{i}", random_prompt(19, seed=i, vocab=vocab), greedy()))
    for _ in range(4):
        engine.step()
    assert engine.blocks.num_free < free_at_start
    for i in range(3):
        out = engine.abort(f"a{i}")
        assert out.finished and out.finish_reason == "abort"
    assert not engine.has_unfinished()
    assert engine.blocks.num_free == free_at_start
