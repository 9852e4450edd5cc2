"""Checkpoints of geometries no other test uses, against transformers: head widths that are no power of
two (24 and 40, 20 and 48), as many KV heads as query heads, V its own projection on full layers, five
experts with three active, odd hidden and expert widths. Greedy tokens must be transformers', through the
reference backends and through the Triton kernels (CPU interpreter here, the GPU under CUDA)."""

from __future__ import annotations

import pytest
import torch
from transformers import Gemma4ForConditionalGeneration

from engine_builder.convert import build_engine
from engine_builder.tiny.random_checkpoint import make_tiny_checkpoint
from engine_builder.tiny.tokenizer import make_tiny_tokenizer
from gemma_runtime.api import GenerateRequest, SamplingParams
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine
from tests.gpu.decode_support import engine_on_device
from tests.parity.conftest import hf_greedy

GEOMETRIES = {
    # (kind, text config overrides)
    "moe-odd": (
        "moe",
        dict(
            hidden_size=48,
            intermediate_size=72,
            num_attention_heads=3,
            num_key_value_heads=3,
            head_dim=24,
            global_head_dim=40,
            num_global_key_value_heads=3,
            attention_k_eq_v=False,
            num_experts=5,
            top_k_experts=3,
            moe_intermediate_size=20,
        ),
    ),
    "dense-gqa3": (
        "dense",
        dict(
            hidden_size=80,
            intermediate_size=64,
            num_attention_heads=6,
            num_key_value_heads=2,
            head_dim=20,
            global_head_dim=48,
            num_global_key_value_heads=2,
        ),
    ),
}
PROMPTS = ["The quick brown fox jumps over the lazy dog near the river bank again and again.", "Hi"]
NEW_TOKENS = 8


@pytest.fixture(scope="module", params=sorted(GEOMETRIES))
def odd(request, tmp_path_factory):
    """(engine dir, prompts as ids, transformers' greedy tokens by request id) for one geometry."""
    kind, overrides = GEOMETRIES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    ckpt = make_tiny_checkpoint(
        root / "ckpt", kind=kind, seed=7, sliding_window=6, num_layers=4, with_vision=False, text_overrides=overrides
    )
    engine_dir = build_engine(str(ckpt), root / "engines", dtype="float32", progress=False)
    hf = Gemma4ForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    tokenizer = make_tiny_tokenizer()
    prompts = [tokenizer.encode(p, add_special_tokens=True) for p in PROMPTS]
    want = {f"r{i}": hf_greedy(hf, p, NEW_TOKENS) for i, p in enumerate(prompts)}
    return engine_dir, prompts, want


def _requests(prompts):
    return [
        GenerateRequest(f"r{i}", p, SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True))
        for i, p in enumerate(prompts)
    ]


def test_reference_backends_decode_transformers_greedy(odd):
    engine_dir, prompts, want = odd
    engine = LLMEngine(engine_dir, RuntimeConfig(block_size=4, max_model_len=128))
    assert engine.generate(_requests(prompts)) == want


def test_triton_kernels_decode_transformers_greedy(odd):
    """The attention kernels pad a head that is no power of two and mask the rest (kernels/common.py)."""
    engine_dir, prompts, want = odd
    assert engine_on_device(engine_dir, block_size=4, max_model_len=128).generate(_requests(prompts)) == want
