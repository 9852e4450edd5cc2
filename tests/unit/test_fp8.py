"""FP8 engines: a tiny MoE model built in float32, bf16 and fp8 from one checkpoint, compared on the CPU path.

The CPU path emulates the GPU's FP8 arithmetic (model/linear.py: activations rounded to e4m3 per token,
e4m3 weights with per-channel scales), so these figures are the quality the FP8 engine will have.

The bounds that matter are asserted on figures no bf16 kernel can move (fp8_quality.py says how: a model
trained in float64, and bf16 / fp8 weights run in float32 arithmetic), and every bound was set from the
spread measured across the CPU's kernel paths (issue 12), `python -m tests.unit.fp8_quality` on an AMX
Xeon (2026-12-01), each path at 1 and 2 threads (thread count changed nothing past the 4th digit):

| figure                      | AMX / AVX512-BF16 | AVX512 without bf16 | AVX2 (oneDNN, ATen, MKL) | bound        |
| perplexity fp32             | 1.9425            | 1.9425              | 1.9728                   |              |
| bf16 weights vs fp32        | +0.51%            | +0.51%              | +0.31%                   | < 2%         |
| fp8 vs bf16 weights         | +9.82%            | +9.82%              | +9.69%                   | < +20%       |
| fp8 agreement with bf16     | 99.5%             | 99.5%               | 91.1%                    | >= 85%       |
| native bf16 arithmetic      | -1.07%, 100%      | -1.07%, 100%        | -2.02%, 91.1%            | < 4%, >= 85% |
| native fp8 arithmetic       | +12.85%, 99.0%    | +12.85%, 99.0%      | +11.2%, 90.1%            | < 20%, >= 85%|

AVX2 trains a different model from the same seed (its float64 GEMMs round differently, and the router's
top-k turns a last-bit difference into another expert): float64 takes the bf16 kernels out of training,
not every kernel, so the bounds hold for both models with room.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors import safe_open

from gemma_runtime.engine.llm_engine import LLMEngine
from gemma_runtime.engine_format.spec import EngineSpec

from .fp8_quality import NEW_TOKENS, build_engines, continuations, greedy, perplexity, teacher_forced_agreement

MIN_AGREEMENT = 0.85
MAX_PPL_CHANGE = 0.20
BF16_WEIGHTS_PPL_CHANGE = 0.02
NATIVE_BF16_PPL_CHANGE = 0.04
NATIVE_BF16_MIN_AGREEMENT = MIN_AGREEMENT


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> dict[str, LLMEngine]:
    return build_engines(tmp_path_factory.mktemp("fp8"))


def test_fp8_engine_layout(engines):
    fp8_dir = engines["fp8"].engine_dir
    spec = EngineSpec.load(fp8_dir)
    assert spec.dtype == "bfloat16" and spec.quantization is not None
    assert spec.quantization.method == "fp8_e4m3" and spec.quantization.granularity == "per_channel"
    with safe_open(str(fp8_dir / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
        for name in spec.quantization.modules:
            w, s = f.get_tensor(name), f.get_tensor(name + "_scale")
            assert w.dtype == torch.float8_e4m3fn and s.dtype == torch.float32 and s.shape == w.shape[:-1]
            assert (w.float().abs().amax(-1) == 448).all()  # every row uses e4m3's whole range
        quantized = set(spec.quantization.modules)
        kinds = {n.split(".", 2)[2] for n in quantized}
        assert kinds == {
            "attn.qkv_proj.weight",
            "attn.o_proj.weight",
            "mlp.gate_up_proj.weight",
            "mlp.down_proj.weight",
            "moe.gate_up_proj",
            "moe.down_proj",
        }
        for name in names - quantized:
            if not name.endswith("_scale"):
                assert f.get_tensor(name).dtype == torch.bfloat16, name  # embeddings, norms, router stay bf16


def test_loading_in_another_dtype_keeps_fp8_weights_and_their_scales(engines):
    """A runtime dtype override casts every floating tensor (router_scale too, though its name ends in
    _scale) but the e4m3 weights and their float32 scales."""
    from gemma_runtime.engine_format.weights import load_weights

    spec = EngineSpec.load(engines["fp8"].engine_dir)
    weights = load_weights(engines["fp8"].engine_dir, torch.device("cpu"), torch.float16)
    fp8 = set(spec.quantization.modules)
    for name, t in weights.items():
        if name in fp8:
            assert t.dtype == torch.float8_e4m3fn, name
        elif name.endswith("_scale") and name[: -len("_scale")] in fp8:
            assert t.dtype == torch.float32, name
        else:
            assert t.dtype == torch.float16, name
    assert any(name.endswith("router_scale") for name in weights)


@pytest.fixture(scope="module")
def bf16_continuations(engines):
    return continuations(engines["bf16"])


def test_fp8_agrees_with_bf16(engines, bf16_continuations):
    """FP8 against bf16, both over their stored weights in float32 arithmetic: what the FP8 rounding costs."""
    agreement = teacher_forced_agreement(bf16_continuations, engines["fp8"])
    same_prefix = [
        next((i for i, (a, b) in enumerate(zip(ref, greedy(engines["fp8"], ids))) if a != b), len(ref))
        for ids, ref in bf16_continuations
    ]
    print(
        f"\nfp8 vs bf16 greedy: teacher-forced agreement {agreement:.1%}; identical free-running prefix "
        f"{sum(same_prefix) / len(same_prefix):.1f} of {NEW_TOKENS} tokens on average"
    )
    assert agreement >= MIN_AGREEMENT


def test_fp8_perplexity_close_to_bf16(engines):
    ppl = {k: perplexity(engines[k]) for k in ("fp32", "bf16", "fp8")}
    change = (ppl["fp8"] - ppl["bf16"]) / ppl["bf16"]
    print(
        f"\nperplexity over the passages: float32 {ppl['fp32']:.3f}, bf16 {ppl['bf16']:.3f}, fp8 {ppl['fp8']:.3f} "
        f"({change:+.2%} against bf16)"
    )
    assert math.isfinite(ppl["fp8"]) and change < MAX_PPL_CHANGE
    assert abs(ppl["bf16"] - ppl["fp32"]) / ppl["fp32"] < BF16_WEIGHTS_PPL_CHANGE  # the yardstick itself


def test_native_bf16_arithmetic_stays_within_the_kernels_spread(engines, bf16_continuations):
    """The engines as served on this CPU (bf16 activations through whichever bf16 kernels it has) stay
    within bounds set from the spread measured across kernel paths (the table above), with room: a broken
    bf16 path (a wrong cast, a lost scale) moves these figures by far more than any kernel does."""
    ppl = {k: perplexity(engines[k]) for k in ("bf16", "bf16-native", "fp8-native")}
    native_bf16 = abs(ppl["bf16-native"] - ppl["bf16"]) / ppl["bf16"]
    native_fp8 = (ppl["fp8-native"] - ppl["bf16"]) / ppl["bf16"]
    agree = {k: teacher_forced_agreement(bf16_continuations, engines[k]) for k in ("bf16-native", "fp8-native")}
    print(
        f"\nnative bf16 arithmetic: bf16 perplexity {native_bf16:+.2%}, fp8 {native_fp8:+.2%} against the float32 "
        f"arithmetic bf16; agreement {agree['bf16-native']:.1%} (bf16), {agree['fp8-native']:.1%} (fp8)"
    )
    assert native_bf16 < NATIVE_BF16_PPL_CHANGE and agree["bf16-native"] >= NATIVE_BF16_MIN_AGREEMENT
    assert native_fp8 < MAX_PPL_CHANGE and agree["fp8-native"] >= MIN_AGREEMENT
