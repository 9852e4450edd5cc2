"""What the kernel tests share: the device, the dtypes and tolerances, and the error measure.

On CUDA the kernels run compiled; without CUDA they run on CPU under Triton's interpreter
(TRITON_INTERPRET=1, set by tests/conftest.py before anything imports triton) with small shapes.
Every check draws fresh random inputs and compares by relative norm error.
"""

from __future__ import annotations

import torch

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
# bf16 operands land between 1e-3 and 1e-2; float32 through tl.dot is tf32 on the GPU (~3e-4), exact-ish on CPU
TOL = {torch.float32: 2e-3, torch.bfloat16: 2e-2}
DTYPES = [torch.bfloat16] if CUDA else [torch.float32, torch.bfloat16]
# the model's head dims (256 sliding, 512 full) plus a tiny one; the interpreter runs these on small batches
HEAD_DIMS = [32, 256, 512]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert not out.isnan().any(), "output has NaN: a kernel read an unused slot or left rows unwritten"
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def assert_as_accurate(out: torch.Tensor, ref: torch.Tensor, truth: torch.Tensor, slack: float = 1.1) -> None:
    """A fused bf16 kernel computes in float32 and rounds once, where the reference's torch ops round
    after each op, so the two differ in the last place of many elements (measured on an H100: 4-10% of
    them) without either being wrong. What must hold is that the kernel is no less accurate: its error
    against the same computation in float64 is at most the reference's, with a little slack for the
    sum of squares added in another order."""
    assert rel_err(out, truth) <= slack * rel_err(ref, truth) + 1e-7, (rel_err(out, truth), rel_err(ref, truth))
