"""Tensor parallel on two GPUs (NCCL) with the decode steps replayed as CUDA graphs whose collectives are
captured: every rank captures the same sizes after its layers are sharded, and every decode step each
rank pads the same broadcast batch and replays the same graph. The greedy tokens must be the
single-GPU engine's. Needs two GPUs; on the CPU tests/parallel/test_tp_parity.py runs the same padded
buffers eagerly over gloo."""

from __future__ import annotations

import pytest
import torch

from gemma_runtime.api import GenerateRequest, SamplingParams
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine
from tests.parallel.conftest import wait_gone

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="two GPUs (NCCL)"
)

PROMPTS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Hi there",
    "<bos><|turn>user\nTell me a story about the sea.<turn|>\n<|turn>model\n",
]


def requests() -> list[GenerateRequest]:
    return [GenerateRequest(f"r{i}", p, SamplingParams(max_tokens=12, ignore_eos=True)) for i, p in enumerate(PROMPTS)]


@pytest.mark.parametrize("expert_parallel", [False, True], ids=["tp2", "ep2"])
def test_captured_tp_decode_graphs_give_the_single_gpu_tokens(random_tiny_engine_dir, expert_parallel):
    base = dict(device="cuda", dtype="float32", block_size=4, max_model_len=128, decode_graph_max_batch=4)
    want = LLMEngine(random_tiny_engine_dir, RuntimeConfig(**base)).generate(requests())
    tp = LLMEngine(
        random_tiny_engine_dir,
        RuntimeConfig(**base, tensor_parallel_size=2, enable_expert_parallel=expert_parallel, parallel_timeout_s=120),
    )
    pids = tp.parallel.pids
    try:
        assert sorted(tp.runner.graphs.graphs) == [1, 2, 4]  # captured on rank 0 (and, in step, on rank 1)
        assert tp.generate(requests()) == want
    finally:
        tp.close()
    assert wait_gone(pids) == []
