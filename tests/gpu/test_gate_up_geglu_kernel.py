"""gate_up and GEGLU in one kernel (kernels/gate_up_geglu.py) against the two launches it would replace
(gemv_linear, then fused_geglu) and against the exact product; bf16 and e4m3 weights, one to four rows."""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from gemma_runtime.kernels.gate_up_geglu import gate_up_geglu  # noqa: E402
from gemma_runtime.kernels.geglu import fused_geglu  # noqa: E402
from gemma_runtime.kernels.gemv import MAX_ROWS, gemv_linear  # noqa: E402
from tests.gpu.kernel_support import DEVICE, DTYPES, TOL, rel_err  # noqa: E402
from tests.gpu.test_gemv_kernel import weights  # noqa: E402

INTER, K = (
    37,
    300,
)  # multiples of neither tile (the last program's columns and K's chunk are masked); small: the interpreter


def exact(x: torch.Tensor, exact_w: torch.Tensor) -> torch.Tensor:
    gate, up = (x.double() @ exact_w.double().t()).split(INTER, dim=-1)  # [M, I] each
    return torch.nn.functional.gelu(gate, approximate="tanh") * up


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fp8", [False, True], ids=["bf16 weights", "e4m3 weights"])
@pytest.mark.parametrize("rows", [1, 3])  # 3 rows run in a 4-row tile
def test_one_launch_equals_gemv_then_geglu(dtype, fp8, rows):
    g = torch.Generator().manual_seed(rows + 10 * fp8)
    x = torch.randn(rows, K, generator=g).to(DEVICE, dtype)
    w, w_scale, exact_w = weights(fp8, 2 * INTER, K, g)
    out = gate_up_geglu(x, w, w_scale)
    assert out.shape == (rows, INTER) and out.dtype == dtype
    two_launches = fused_geglu(gemv_linear(x, w, w_scale))
    # same sums in the same order and the same roundings; the gemv tile holds twice the weight rows, so
    # only K's chunking is shared and the last bits may differ: within one rounding of the output dtype
    assert rel_err(out, two_launches) < TOL[dtype] / 4
    assert rel_err(out, exact(x, exact_w)) < TOL[dtype]


def test_keeps_leading_dims_and_refuses_more_rows_than_its_tile():
    g = torch.Generator().manual_seed(0)
    w, _, exact_w = weights(False, 2 * INTER, K, g)
    x = torch.randn(1, 1, K, generator=g).to(DEVICE, DTYPES[0])
    assert gate_up_geglu(x, w).shape == (1, 1, INTER)
    with pytest.raises(ValueError, match="at most"):
        gate_up_geglu(torch.randn(MAX_ROWS + 1, K).to(DEVICE, DTYPES[0]), w)
