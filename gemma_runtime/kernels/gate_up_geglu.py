"""The dense MLP's gate_up linear and its GEGLU in one kernel, for one to four rows (issue 19's lever
"GEGLU fused into gate_up").

At batch 1 the dense MLP runs gate_up (a GEMV over the [2I, K] weight), then the GEGLU kernel over the
[T, 2I] it wrote. Here each program owns BLOCK_N gate rows and their BLOCK_N up rows (n and I + n),
streams both along K as kernels/gemv.py does (same chunks, same float32 sums, so each half equals
gemv_linear's exactly), rounds them to the activation dtype as the unfused linear's output is rounded,
and writes gelu_tanh(gate) * up with the GEGLU kernel's roundings: one launch and no [T, 2I] round trip.

Not yet taken by the runtime: like gemv (linear.takes_gemv) it becomes the dense MLP's path only once
timed on a GPU against the two launches it replaces (bench/tune_kernels.py); that measurement is owed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gemma_runtime.kernels.common import gelu_tanh
from gemma_runtime.kernels.gemv import MAX_ROWS, gemv_tiles


@triton.jit
def _gate_up_geglu_kernel(
    x_ptr,
    w_ptr,
    scale_ptr,
    out_ptr,
    M,
    inter,
    K,
    stride_xm,  # x [M, K], K contiguous
    stride_wn,  # w [2 * inter, K] bf16 or e4m3, the gate rows first, K contiguous
    stride_om,  # out [M, inter], inter contiguous
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HAS_SCALE: tl.constexpr,
):
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < inter
    gate = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], dtype=tl.float32)
    up = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        w_mask = n_mask[:, None] & k_mask[None, :]
        w_gate = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :], mask=w_mask, other=0.0)
        w_up = tl.load(w_ptr + (inter + offs_n)[:, None] * stride_wn + offs_k[None, :], mask=w_mask, other=0.0)
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0
        ).to(tl.float32)  # [BLOCK_M, BLOCK_K]
        gate += w_gate.to(tl.float32)[None, :, :] * x[:, None, :]  # [BLOCK_M, BLOCK_N, BLOCK_K]
        up += w_up.to(tl.float32)[None, :, :] * x[:, None, :]
    g = tl.sum(gate, axis=2)  # [BLOCK_M, BLOCK_N]
    u = tl.sum(up, axis=2)
    if HAS_SCALE:
        g *= tl.load(scale_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
        u *= tl.load(scale_ptr + inter + offs_n, mask=n_mask, other=0.0)[None, :]
    out_ty = out_ptr.dtype.element_ty
    g = g.to(out_ty).to(tl.float32)  # the linear's output rounding, then the GEGLU kernel's
    u = u.to(out_ty).to(tl.float32)
    act = gelu_tanh(g).to(out_ty).to(tl.float32)
    tl.store(
        out_ptr + offs_m[:, None] * stride_om + offs_n[None, :],
        (act * u).to(out_ty),
        mask=m_mask[:, None] & n_mask[None, :],
    )


def gate_up_geglu(x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor | None = None) -> torch.Tensor:
    """gelu_tanh(x @ w[:I]^T) * (x @ w[I:]^T) for x [..., K] (at most MAX_ROWS rows) and the fused gate_up
    weight w [2I, K] (bf16, or e4m3 with per-row float32 w_scale [2I]) -> [..., I] in x's dtype."""
    K = x.shape[-1]
    two_i = w.shape[0]
    inter = two_i // 2
    x2 = x.reshape(-1, K).contiguous()  # [M, K]
    M = x2.shape[0]
    if M > MAX_ROWS:
        raise ValueError(f"gate_up_geglu takes at most {MAX_ROWS} rows, got {M}")
    out = torch.empty((M, inter), dtype=x.dtype, device=x.device)
    if M:
        block_n, block_k, warps = gemv_tiles(M, w.element_size())
        block_n = max(1, block_n // 2)  # two weight rows per output column: the same registers as gemv's tile
        _gate_up_geglu_kernel[(triton.cdiv(inter, block_n),)](
            x2,
            w,
            w_scale if w_scale is not None else w,
            out,
            M,
            inter,
            K,
            x2.stride(0),
            w.stride(0),
            out.stride(0),
            BLOCK_M=triton.next_power_of_2(M),
            BLOCK_N=block_n,
            BLOCK_K=block_k,
            HAS_SCALE=w_scale is not None,
            num_warps=warps,
        )
    return out.view(*x.shape[:-1], inter)
