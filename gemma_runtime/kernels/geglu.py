"""The dense MLP's GEGLU, gelu_tanh(gate) * up, in one kernel.

The reference (model/layers.py geglu) is two torch kernels, the GELU and the product, and both models
run it in every layer (the 26B-A4B's dense MLP beside its experts, the 31B's only MLP). Rounding follows
the reference: the GELU's output rounded to the activation dtype, then the product rounded.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gemma_runtime.kernels.common import gelu_tanh


@triton.jit
def _geglu_kernel(x_ptr, out_ptr, inter, stride_x, BLOCK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    out_ty = out_ptr.dtype.element_ty
    gate = tl.load(x_ptr + t * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + t * stride_x + inter + cols, mask=mask, other=0.0).to(tl.float32)
    act = gelu_tanh(gate).to(out_ty).to(tl.float32)
    tl.store(out_ptr + t * inter + cols, (act * up).to(out_ty), mask=mask)


def fused_geglu(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [T, 2I], the gate half first -> [T, I]."""
    T, two_i = gate_up.shape
    inter = two_i // 2
    if gate_up.stride(-1) != 1:
        gate_up = gate_up.contiguous()
    out = torch.empty((T, inter), dtype=gate_up.dtype, device=gate_up.device)
    if T:
        block = 1024
        _geglu_kernel[(T, triton.cdiv(inter, block))](gate_up, out, inter, gate_up.stride(0), BLOCK=block, num_warps=4)
    return out
