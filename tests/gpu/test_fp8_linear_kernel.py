"""The FP8 linear: the W8A16 kernel for few rows against the dequantized product, and the switch to
torch._scaled_mm (CUDA only) for many."""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from gemma_runtime.engine_format.fp8 import dequantize, quantize_per_row  # noqa: E402
from gemma_runtime.kernels import fp8_gemm  # noqa: E402
from gemma_runtime.kernels.fp8_gemm import w8a16_linear  # noqa: E402
from gemma_runtime.model.linear import W8A16_MAX_ROWS, emulated_fp8_linear  # noqa: E402
from gemma_runtime.model.registry import create  # noqa: E402
from tests.gpu.kernel_support import CUDA, DEVICE, DTYPES, TOL, rel_err  # noqa: E402


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows", [1, 5, 33])
@pytest.mark.parametrize("split_k", [None, 1, 3])
@pytest.mark.parametrize("wide", [False, True], ids=["tiles", "wide-tiles"])
def test_w8a16_linear_matches_the_dequantized_product(dtype, rows, split_k, wide, monkeypatch):
    """The decode-time FP8 linear: e4m3 weights widened in the kernel, activations as they are. N and K
    (200, 300) are not multiples of the tiles; split-K (forced, or chosen) sums float32 partials. `wide`
    gives this small weight the tiles of a large one (fp8_gemm.W8A16_WIDE_TILE_MIN_WEIGHT)."""
    if wide:
        monkeypatch.setattr(fp8_gemm, "W8A16_WIDE_TILE_MIN_WEIGHT", 0)
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 300, generator=g).to(DEVICE, dtype)
    w_q, w_s = quantize_per_row(torch.randn(200, 300, generator=g) / 20)
    w_q, w_s = w_q.to(DEVICE), w_s.to(DEVICE)
    out = w8a16_linear(x, w_q, w_s, split_k=split_k)
    exact = x.float() @ dequantize(w_q, w_s, torch.float32).t()
    assert out.shape == (rows, 200) and out.dtype == dtype
    assert rel_err(out, exact) < TOL[dtype]  # no activation rounding: as close as the dtype allows


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="torch._scaled_mm needs CUDA")
def test_fp8_linear_takes_w8a16_for_few_rows_and_scaled_mm_for_many():
    g = torch.Generator().manual_seed(0)
    w_q, w_s = quantize_per_row(torch.randn(4096, 2816, generator=g) / 50)
    w_q, w_s = w_q.to(DEVICE), w_s.to(DEVICE)
    exact = lambda x: x.float() @ dequantize(w_q, w_s, torch.float32).t()  # noqa: E731
    linear = create("linear", DEVICE)
    few = torch.randn(W8A16_MAX_ROWS, 2816, generator=g).to(DEVICE, torch.bfloat16)
    assert rel_err(linear(few, {"w": w_q, "w_scale": w_s}, "w"), exact(few)) < TOL[torch.bfloat16]  # W8A16
    many = torch.randn(W8A16_MAX_ROWS + 37, 2816, generator=g).to(DEVICE, torch.bfloat16)
    out = linear(many, {"w": w_q, "w_scale": w_s}, "w")  # the torch._scaled_mm path
    emulated = emulated_fp8_linear(many.cpu(), w_q.cpu(), w_s.cpu())  # the CPU emulation of the same arithmetic
    assert rel_err(out.cpu(), emulated) < TOL[torch.bfloat16]
    assert rel_err(out, exact(many)) < 0.05  # per-token e4m3 activations: a few percent, never more
