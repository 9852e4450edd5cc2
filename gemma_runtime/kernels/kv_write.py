"""Where the KV cache is written: a layer's whole q/k/v step in one launch. One program per (token,
head) of the fused QKV projection normalises q (and rotates it) into q's output, and k (rotated) and v
(no weight) straight into the KV cache at the token's slot. The reference is three norms and two cache
writes (model/kv_write.py TorchKVWrite); the norm arithmetic is rms_norm.py's `_norm_row`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gemma_runtime.kernels.rms_norm import _norm_row


@triton.jit
def _qkv_norm_kernel(
    qkv_ptr,
    q_w_ptr,
    k_w_ptr,
    cos_ptr,
    sin_ptr,
    q_out_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slots_ptr,
    stride_t,  # qkv [T, (NQ + 2 NKV) D] (or (NQ + NKV) D on K=V layers), D contiguous
    stride_cs,
    stride_ch,  # caches [slots, NKV, D], D contiguous
    eps,
    NQ: tl.constexpr,
    NKV: tl.constexpr,
    D: tl.constexpr,
    K_EQ_V: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Program (token t, head j) of NQ + 2 NKV heads: q heads normed and rotated into q_out, k heads normed
    and rotated into the K cache at the token's slot, v heads normed without weight into the V cache."""
    t = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    cols = tl.arange(0, BLOCK)
    mask = cols < D
    out_ty = q_out_ptr.dtype.element_ty  # the model dtype; the reference rounds to it before the cache write
    x_row = qkv_ptr + t * stride_t
    cos_row, sin_row = cos_ptr + t * D, sin_ptr + t * D
    if j < NQ:
        y = _norm_row(x_row + j * D, q_w_ptr, cos_row, sin_row, cols, mask, D, eps, out_ty, True, True)
        tl.store(q_out_ptr + (t * NQ + j) * D + cols, y, mask=mask)
    else:
        slot = tl.load(slots_ptr + t)
        if j < NQ + NKV:
            y = _norm_row(x_row + j * D, k_w_ptr, cos_row, sin_row, cols, mask, D, eps, out_ty, True, True)
            dst = k_cache_ptr + slot * stride_cs + (j - NQ) * stride_ch
            tl.store(dst + cols, y.to(k_cache_ptr.dtype.element_ty), mask=mask)
        else:
            # on K=V layers V is the raw K projection: head j - NKV of the same row
            src = j - NKV if K_EQ_V else j
            y = _norm_row(x_row + src * D, k_w_ptr, cos_row, sin_row, cols, mask, D, eps, out_ty, False, False)
            dst = v_cache_ptr + slot * stride_cs + (j - NQ - NKV) * stride_ch
            tl.store(dst + cols, y.to(v_cache_ptr.dtype.element_ty), mask=mask)


def fused_qkv_norm_kv_write(
    qkv: torch.Tensor,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    k_eq_v: bool,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    eps: float,
    rope: tuple[torch.Tensor, torch.Tensor],
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
) -> torch.Tensor:
    """The fused QKV projection [T, (nq + 2 nkv) d] (or [T, (nq + nkv) d] where V is K) -> q [T, nq, d]:
    q and k normed and rotated, v normed without a weight, k and v written to the caches at `slots`,
    all in one launch (the reference: three norms and two cache writes)."""
    T = qkv.shape[0]
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    q = torch.empty((T, num_q_heads, head_dim), dtype=qkv.dtype, device=qkv.device)
    if T:
        block = triton.next_power_of_2(head_dim)
        cos, sin = rope[0].contiguous(), rope[1].contiguous()  # [T, d] float32
        _qkv_norm_kernel[(T, num_q_heads + 2 * num_kv_heads)](
            qkv,
            q_weight,
            k_weight,
            cos,
            sin,
            q,
            k_cache,
            v_cache,
            slots,
            qkv.stride(0),
            k_cache.stride(0),
            k_cache.stride(1),
            eps,
            NQ=num_q_heads,
            NKV=num_kv_heads,
            D=head_dim,
            K_EQ_V=k_eq_v,
            BLOCK=block,
            num_warps=min(16, max(1, block // 256)),
        )
    return q
