"""One engine across two gloo ranks on the CPU against the single-process runtime and transformers:
both tiny shapes under tensor parallel, and the MoE under expert parallel. One TP engine (rank 0 here,
rank 1 a spawned worker) per case serves every test of it, so the spawn is paid three times."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from gemma_runtime.api import GenerateRequest, SamplingParams
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine
from gemma_runtime.scheduling.scheduler import ScheduledSeq
from gemma_runtime.scheduling.sequence import Sequence
from tests.parallel.conftest import SLIDING_WINDOW, wait_gone
from tests.parity.conftest import hf_greedy, run_joining
from tests.recorded import recorded_calls

NEW_TOKENS = 24
IMAGE_BUDGET = 70
# Small enough that the preemption test's three requests cannot all hold their full-layer pages, large
# enough for the two-image prompt alone.
CONFIG = dict(
    block_size=4,
    num_full_blocks=60,
    max_num_batched_tokens=16,
    max_model_len=240,
    default_image_soft_tokens=IMAGE_BUDGET,
    parallel_timeout_s=60,
)
# (shape, expert parallel, decode graph buffers): with buffers (and prefill buffers up to 16 tokens) every
# rank pads each such step from the same broadcast batch (on a GPU: replays the same captured graph,
# collectives inside)
CASES = {"moe-tp2": ("moe", False, 0), "dense-tp2": ("dense", False, 4), "moe-ep2": ("moe", True, 4)}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tiny_shapes):
    """(TP engine, single-process engine, HF model) for one shape and mode; the TP ranks stop after it."""
    kind, ep, graph_max = CASES[request.param]
    engine_dir, hf = tiny_shapes(kind)
    tp = LLMEngine(
        engine_dir,
        RuntimeConfig(
            **CONFIG,
            tensor_parallel_size=2,
            enable_expert_parallel=ep,
            decode_graph_max_batch=graph_max,
            prefill_graph_max_tokens=16 if graph_max else 0,
        ),
    )
    single = LLMEngine(engine_dir, RuntimeConfig(**CONFIG))
    pids = tp.parallel.pids
    yield tp, single, hf
    tp.close()
    assert wait_gone(pids) == [], "a tensor-parallel worker outlived close()"


def random_prompt(n: int, seed: int, vocab: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, vocab) for _ in range(n)]


def greedy() -> SamplingParams:
    return SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)


def all_logits(engine: LLMEngine, prompt: list[int]) -> torch.Tensor:
    """Every position's logits [T, V] straight from a ForwardBatch; its pages given back after."""
    seq = Sequence("logits", prompt, greedy(), frozenset())
    engine.blocks.allocate(seq.block_tables, 0, len(prompt))
    try:
        batch = engine.runner._build_batch([ScheduledSeq(seq, len(prompt))])
        batch.logits_indices = torch.arange(len(prompt))
        with torch.inference_mode():
            return engine.runner.text.logits(engine.runner.text.forward(batch, engine.runner.kv_caches))
    finally:
        engine.blocks.free(seq.block_tables)
        engine.runner.release(seq)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_rank0_holds_its_shard_and_kv_pages_sized_per_rank(case):
    tp, single, _ = case
    w, whole = tp.runner.text.w, single.runner.text.w
    assert w["layers.0.attn.o_proj.weight"].shape[1] * 2 == whole["layers.0.attn.o_proj.weight"].shape[1]
    assert w["layers.0.mlp.down_proj.weight"].shape[1] * 2 == whole["layers.0.mlp.down_proj.weight"].shape[1]
    if tp.spec.text.moe is not None:
        ep = tp.parallel.plan.expert_parallel
        mine, full = w["layers.0.moe.down_proj"].shape, whole["layers.0.moe.down_proj"].shape  # [E, H, Ie]
        assert (mine[0] * 2, mine[2]) == (full[0], full[2]) if ep else (mine[0], mine[2] * 2) == (full[0], full[2])
    heads = [(a.num_kv_heads, b.num_kv_heads) for a, b in zip(tp.runner.spec.text.layers, single.spec.text.layers)]
    # the sliding layers' 2 KV heads are split, the full layers' single head is replicated
    assert all(mine == (whole // 2 if whole >= 2 else 1) for mine, whole in heads), heads
    assert tp.runner.kv_caches[0][0].shape[1] == single.runner.kv_caches[0][0].shape[1] // 2


def test_prefill_logits_match_single_process_and_transformers(case):
    tp, single, hf = case
    prompt = random_prompt(3 * SLIDING_WINDOW + 5, seed=3, vocab=tp.spec.text.vocab_size)
    ours = all_logits(tp, prompt)
    assert rel_err(ours, all_logits(single, prompt)) < 1e-4
    with torch.inference_mode():
        assert rel_err(ours, hf(input_ids=torch.tensor([prompt])).logits[0].float()) < 1e-4


def test_greedy_long_prompt_crosses_the_window(case):
    tp, _, hf = case
    prompt = random_prompt(5 * SLIDING_WINDOW + 3, seed=1, vocab=tp.spec.text.vocab_size)
    assert tp.generate([GenerateRequest("long", prompt, greedy())])["long"] == hf_greedy(hf, prompt, NEW_TOKENS)


def test_concurrent_requests_joining_at_different_steps(case):
    tp, _, hf = case
    free_at_start = tp.blocks.num_free
    prompts = {f"r{i}": random_prompt(n, seed=10 + i, vocab=tp.spec.text.vocab_size) for i, n in enumerate([5, 23, 11])}
    join_at = {"r0": 0, "r1": 2, "r2": 5}
    runs = {kind: recorded_calls(graphs) for kind, graphs in tp.runner.step_graphs.items()}
    got = run_joining(tp, prompts, join_at, greedy())
    for rid, prompt in prompts.items():
        assert got[rid] == hf_greedy(hf, prompt, NEW_TOKENS), rid
    assert tp.blocks.num_free == free_at_start
    # with buffers: decode steps of all three (padded to 4), and r0's 5-token prompt alone in its step
    padded = {(kind, len(lens)) for kind, calls in runs.items() for _, lens in calls}
    assert (tp.config.decode_graph_max_batch > 0) == ({("decode", 3), ("prefill", 1)} <= padded)


def test_preemption_and_resumption(case):
    tp, single, _ = case
    prompts = {f"p{i}": random_prompt(60 + 7 * i, seed=20 + i, vocab=tp.spec.text.vocab_size) for i in range(3)}
    requests = [GenerateRequest(rid, p, greedy()) for rid, p in prompts.items()]
    expected = single.generate(requests)  # the single-process runtime's tokens (its own parity is tested)
    seqs = []
    for r in requests:
        tp.add_request(r)
        seqs.append(tp.requests[r.request_id].seq)
    got: dict[str, list[int]] = {rid: [] for rid in prompts}
    while tp.has_unfinished():
        for out in tp.step():
            got[out.request_id].extend(out.token_ids)
    assert sum(s.num_preemptions for s in seqs) > 0, "the pool was meant to be too small for all three"
    assert got == expected


def noise_image(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def test_two_images_match_the_single_process_runtime(case):
    """The vision tower runs on rank 0 alone; its soft tokens reach rank 1 through the step broadcast."""
    tp, single, _ = case
    images = (noise_image(200, 150, seed=1), noise_image(96, 320, seed=2))
    prompt = "<bos><|turn>user\nLook: <|image|> and then <|image|> now tell me<turn|>\n<|turn>model\n"
    request = GenerateRequest("img", prompt, greedy(), images=images)
    assert len(tp.prepare(request).image_spans) == 2
    ours = tp.generate([request])["img"]
    assert ours == single.generate([request])["img"]
    assert len(ours) == NEW_TOKENS
