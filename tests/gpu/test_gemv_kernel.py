"""The matrix-vector kernel for one to four rows (kernels/gemv.py), bf16 and FP8 weights, against the
exact product; the measured policy that picks it (linear.takes_gemv), and on CUDA that linear() follows it."""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from gemma_runtime.engine_format.fp8 import FP8, dequantize, quantize_per_row  # noqa: E402
from gemma_runtime.kernels.fp8_gemm import w8a16_linear  # noqa: E402
from gemma_runtime.kernels.gemv import MAX_ROWS, gemv_linear  # noqa: E402
from gemma_runtime.model import linear as linear_module  # noqa: E402
from gemma_runtime.model.registry import create  # noqa: E402
from tests.gpu.kernel_support import CUDA, DEVICE, DTYPES, TOL, rel_err  # noqa: E402


def weights(fp8: bool, n: int, k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(weight as stored, its row scales or None, the float32 matrix it stands for)."""
    w = torch.randn(n, k, generator=g) / 20
    if fp8:
        w_q, w_s = quantize_per_row(w)
        return w_q.to(DEVICE), w_s.to(DEVICE), dequantize(w_q, w_s, torch.float32).to(DEVICE)
    w = w.to(DEVICE, torch.bfloat16)
    return w, None, w.float()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fp8", [False, True], ids=["bf16 weights", "e4m3 weights"])
@pytest.mark.parametrize("rows", [1, 2, 3, 4])
def test_gemv_matches_the_exact_product(dtype, fp8, rows):
    """N = 203 and K = 1,100 are multiples of neither tile (the last chunk of K and the last program's
    rows are masked); 3 rows run in a 4-row tile."""
    g = torch.Generator().manual_seed(rows + 10 * fp8)
    x = torch.randn(rows, 1100, generator=g).to(DEVICE, dtype)
    w, w_scale, exact_w = weights(fp8, 203, 1100, g)
    out = gemv_linear(x, w, w_scale)
    assert out.shape == (rows, 203) and out.dtype == dtype
    assert rel_err(out, x.float() @ exact_w.t()) < TOL[dtype]  # float32 sums, one rounding to the output dtype


def test_gemv_keeps_leading_dims_and_refuses_more_rows_than_its_tile():
    g = torch.Generator().manual_seed(0)
    w, _, exact_w = weights(False, 64, 96, g)
    x = torch.randn(2, 1, 96, generator=g).to(DEVICE)  # [B, 1, K]
    out = gemv_linear(x, w)
    assert out.shape == (2, 1, 64) and rel_err(out, x.float() @ exact_w.t()) < TOL[torch.float32]
    with pytest.raises(ValueError, match="at most"):
        gemv_linear(torch.randn(MAX_ROWS + 1, 96, device=DEVICE), w)


def test_the_kernel_takes_one_row_of_a_small_fp8_weight_and_nothing_else():
    """The measured policy (model/linear.py): one row, e4m3, at most 2^25 values (the 26B-A4B's linears,
    not the 31B's); bf16 weights and more rows stay with cuBLAS and W8A16."""
    meta = lambda n, k, dtype=FP8: torch.empty((n, k), dtype=dtype, device="meta")  # noqa: E731
    assert linear_module.takes_gemv(1, meta(8192, 2816))  # 26B-A4B qkv
    assert not linear_module.takes_gemv(2, meta(8192, 2816))
    assert not linear_module.takes_gemv(1, meta(8192, 2816, torch.bfloat16))
    assert not linear_module.takes_gemv(1, meta(5376, 8192))  # 31B o_proj, 44M values


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="linear() takes the kernel only on CUDA")
def test_linear_sends_what_takes_gemv_says_to_the_kernel():
    g = torch.Generator().manual_seed(1)
    w, w_scale, _ = weights(True, 4096, 2816, g)
    named = {"w": w, "w_scale": w_scale}
    linear = create("linear", DEVICE)
    one = torch.randn(1, 2816, generator=g).to(DEVICE, torch.bfloat16)
    assert torch.equal(linear(one, named, "w"), gemv_linear(one, w, w_scale))  # the same kernel, deterministic
    two = torch.randn(2, 2816, generator=g).to(DEVICE, torch.bfloat16)
    assert torch.equal(linear(two, named, "w"), w8a16_linear(two, w, w_scale))  # a row more: W8A16, as before
    bf16_w = w_scale[:, None].to(torch.bfloat16) * w.to(torch.bfloat16)
    assert torch.equal(linear(one, {"w": bf16_w}, "w"), torch.nn.functional.linear(one, bf16_w))  # cuBLAS
