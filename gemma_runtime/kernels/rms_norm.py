"""Gemma 4's RMSNorm in one kernel, with what follows it fused in: the residual add and the layer
scalar, or (for q and k) the rotary embedding.

The reference norm (model/layers.py) is eight small torch kernels (upcast, square, mean, add, power,
two multiplies, downcast), and a 26B-A4B layer normalises eleven times (input, post-attention,
pre-FFN, post-FFN, q, k, v, router, experts in, both MoE branches): some 2,500 kernels per decode
step for norms alone, each a few microseconds even inside a CUDA graph. Here each norm is one launch,
and `residual + norm(x)`, `(residual + norm(x)) * layer_scalar` and `rope(norm(q))` are one launch too
(rope alone is another seven torch kernels per q or k: negate, concatenate, two casts, two multiplies,
an add).

The arithmetic and its rounding points follow the reference exactly: float32 inside, the normalised
value rounded to the output dtype, then the add and the scalar each rounded as torch would.

Rows: x is [rows, H], or [T, heads, H] with any stride between tokens (q and k are strided views of
the fused QKV projection); the output is contiguous.

`fused_ffn_prologue` starts a layer's feed-forward half in one launch: the post-attention norm and
residual add, then from that one row the pre-FFN norm and, on MoE layers, the experts' input norm and
the router's input (the reference: four norm launches and two multiplies).

`fused_moe_epilogue` ends a MoE layer in one launch: the sum over each token's k expert rows, both
branches' post-norms and their sum, the post-FFN norm, the residual and the layer scalar (the
reference: a sum, a cast and three norm launches); `fused_layer_end` ends a dense layer. Both also
write the result's norm with the next layer's input weight (the final norm's after the last layer),
so no layer starts with a norm launch of its own.

A layer's q/k/v step, which writes the KV cache, is kernels/kv_write.py (built on `_norm_row`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _norm_row(
    x_row,
    w_ptr,
    cos_row,
    sin_row,
    cols,
    mask,
    H,
    eps,
    out_ty: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_ROPE: tl.constexpr,
):
    """One row's rms_norm(x) * weight, rotated when HAS_ROPE, rounded to out_ty where the reference rounds."""
    x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(x * x, 0) / H + eps)  # x * (mean + eps)^-0.5, as the reference
    y = x * inv
    if HAS_WEIGHT:
        y = y * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    y = y.to(out_ty)  # the norm's own output, as the reference rounds it
    if HAS_ROPE:
        # NeoX rotation: dim c pairs with c + H/2. The partner is read again from memory (registers
        # cannot be permuted) and normalised with the same factor.
        half = H // 2
        partner = tl.where(cols < half, cols + half, cols - half)
        xp = tl.load(x_row + partner, mask=mask, other=0.0).to(tl.float32) * inv
        if HAS_WEIGHT:
            xp = xp * tl.load(w_ptr + partner, mask=mask, other=0.0).to(tl.float32)
        xp = xp.to(out_ty).to(tl.float32)
        rotated = tl.where(cols < half, -xp, xp)
        cos = tl.load(cos_row + cols, mask=mask, other=0.0).to(out_ty).to(tl.float32)
        sin = tl.load(sin_row + cols, mask=mask, other=0.0).to(out_ty).to(tl.float32)
        # x * cos + rotated * sin, each product and the sum rounded to the output dtype as torch does
        y = ((y.to(tl.float32) * cos).to(out_ty).to(tl.float32) + (rotated * sin).to(out_ty).to(tl.float32)).to(out_ty)
    return y


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    w_ptr,
    res_ptr,
    scale_ptr,
    cos_ptr,
    sin_ptr,
    out_ptr,
    H,
    heads,
    stride_xt,
    stride_xh,
    eps,  # row r is token r // heads, head r % heads; H contiguous
    HAS_WEIGHT: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_ROPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    token = (row // heads).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < H
    out_ty = out_ptr.dtype.element_ty
    x_row = x_ptr + token * stride_xt + (row % heads) * stride_xh
    y = _norm_row(
        x_row, w_ptr, cos_ptr + token * H, sin_ptr + token * H, cols, mask, H, eps, out_ty, HAS_WEIGHT, HAS_ROPE
    )
    out_row = out_ptr + row.to(tl.int64) * H
    if HAS_RESIDUAL:
        y = (tl.load(res_ptr + row.to(tl.int64) * H + cols, mask=mask, other=0.0).to(tl.float32) + y.to(tl.float32)).to(
            out_ty
        )
    if HAS_SCALE:
        y = (y.to(tl.float32) * tl.load(scale_ptr).to(tl.float32)).to(out_ty)
    tl.store(out_row + cols, y, mask=mask)


@triton.jit
def _norm_values(x, w_ptr, cols, mask, H, eps, out_ty: tl.constexpr):
    """rms_norm(x) * weight rounded to out_ty, for float32 values already in registers (masked lanes 0)."""
    inv = 1.0 / tl.sqrt(tl.sum(x * x, 0) / H + eps)
    return (x * inv * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)).to(out_ty)


@triton.jit
def _add_normed(res_ptr, row, x, w_ptr, cols, mask, H, eps, out_ty: tl.constexpr):
    """residual + rms_norm(x) * weight, the norm and the sum each rounded to out_ty (x: float32 values)."""
    y = _norm_values(x, w_ptr, cols, mask, H, eps, out_ty)
    return (tl.load(res_ptr + row, mask=mask, other=0.0).to(tl.float32) + y.to(tl.float32)).to(out_ty)


@triton.jit
def _ffn_prologue_kernel(
    h_ptr,
    res_ptr,
    w_post_attn_ptr,
    w_pre_ffn_ptr,
    w_experts_ptr,
    router_scale_ptr,
    x_out_ptr,
    mlp_out_ptr,
    experts_out_ptr,
    router_out_ptr,
    H,
    eps,
    router_factor,  # every tensor [T, H] contiguous
    HAS_MOE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One token: x = residual + post_attn_norm(h), then x's pre-FFN norm and, on MoE layers, its experts'
    norm and the router's input (no-weight norm times router_scale times H^-0.5), all from one read of x."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < H
    row = t * H + cols
    out_ty = x_out_ptr.dtype.element_ty
    x = _add_normed(
        res_ptr,
        row,
        tl.load(h_ptr + row, mask=mask, other=0.0).to(tl.float32),
        w_post_attn_ptr,
        cols,
        mask,
        H,
        eps,
        out_ty,
    )
    tl.store(x_out_ptr + row, x, mask=mask)
    xf = x.to(tl.float32)
    tl.store(mlp_out_ptr + row, _norm_values(xf, w_pre_ffn_ptr, cols, mask, H, eps, out_ty), mask=mask)
    if HAS_MOE:
        tl.store(experts_out_ptr + row, _norm_values(xf, w_experts_ptr, cols, mask, H, eps, out_ty), mask=mask)
        r = (xf / tl.sqrt(tl.sum(xf * xf, 0) / H + eps)).to(out_ty)  # the no-weight norm, rounded
        r = (r.to(tl.float32) * tl.load(router_scale_ptr + cols, mask=mask, other=0.0).to(tl.float32)).to(out_ty)
        tl.store(router_out_ptr + row, (r.to(tl.float32) * router_factor).to(out_ty), mask=mask)


@triton.jit
def _moe_epilogue_kernel(
    dense_ptr,
    experts_ptr,
    res_ptr,
    w_dense_ptr,
    w_experts_ptr,
    w_post_ptr,
    scalar_ptr,
    w_next_ptr,
    out_ptr,
    next_ptr,
    H,
    stride_et,
    stride_ek,
    eps,  # experts [T, SLOTS, H] (SLOTS 1: already summed), H contiguous
    SLOTS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One token: the k expert rows summed (float32, then rounded), both branches post-normed and added,
    the post-FFN norm, the residual and the layer scalar; each rounding where the reference rounds. The
    result's norm with the next layer's input weight (or the final norm's) goes to next_ptr."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < H
    out_ty = out_ptr.dtype.element_ty
    e = tl.zeros([BLOCK], dtype=tl.float32)
    for k in range(SLOTS):
        e += tl.load(experts_ptr + t * stride_et + k * stride_ek + cols, mask=mask, other=0.0).to(tl.float32)
    e = e.to(out_ty).to(tl.float32)
    dense_out = tl.load(dense_ptr + t * H + cols, mask=mask, other=0.0).to(tl.float32)
    dense = _norm_values(dense_out, w_dense_ptr, cols, mask, H, eps, out_ty)
    m = (dense.to(tl.float32) + _norm_values(e, w_experts_ptr, cols, mask, H, eps, out_ty).to(tl.float32)).to(out_ty)
    y = _add_normed(res_ptr, t * H + cols, m.to(tl.float32), w_post_ptr, cols, mask, H, eps, out_ty)
    y = (y.to(tl.float32) * tl.load(scalar_ptr).to(tl.float32)).to(out_ty)
    tl.store(out_ptr + t * H + cols, y, mask=mask)
    tl.store(next_ptr + t * H + cols, _norm_values(y.to(tl.float32), w_next_ptr, cols, mask, H, eps, out_ty), mask=mask)


@triton.jit
def _layer_end_kernel(
    m_ptr,
    res_ptr,
    w_post_ptr,
    scalar_ptr,
    w_next_ptr,
    out_ptr,
    next_ptr,
    H,
    eps,  # every tensor [T, H] contiguous
    BLOCK: tl.constexpr,
):
    """One token of a dense layer's end: (residual + post_ffn_norm(m)) * layer_scalar, and its norm with
    the next layer's input weight (or the final norm's)."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < H
    row = t * H + cols
    out_ty = out_ptr.dtype.element_ty
    y = _add_normed(
        res_ptr, row, tl.load(m_ptr + row, mask=mask, other=0.0).to(tl.float32), w_post_ptr, cols, mask, H, eps, out_ty
    )
    y = (y.to(tl.float32) * tl.load(scalar_ptr).to(tl.float32)).to(out_ty)
    tl.store(out_ptr + row, y, mask=mask)
    tl.store(next_ptr + row, _norm_values(y.to(tl.float32), w_next_ptr, cols, mask, H, eps, out_ty), mask=mask)


def fused_rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
    residual: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    rope: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """((residual +) rms_norm(x) * weight) (* scale) over the last dim, or rope(rms_norm(x) * weight);
    x [rows, H] or [T, heads, H]; residual contiguous and shaped like the output; scale a one-element
    tensor; rope (cos, sin), each [T, H] float32 (model/layers.py rope_cos_sin)."""
    H = x.shape[-1]
    if x.stride(-1) != 1:
        x = x.contiguous()
    if x.dim() == 3:
        heads, stride_t, stride_h = x.shape[1], x.stride(0), x.stride(1)
    else:
        x = x.reshape(-1, H) if x.dim() != 2 else x
        heads, stride_t, stride_h = 1, x.stride(0), 0
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    rows = out.numel() // H if H else 0
    if rows:
        block = triton.next_power_of_2(H)
        cos, sin = (rope[0].contiguous(), rope[1].contiguous()) if rope is not None else (x, x)
        _rms_norm_kernel[(rows,)](
            x,
            weight if weight is not None else x,
            residual if residual is not None else x,
            scale if scale is not None else x,
            cos,
            sin,
            out,
            H,
            heads,
            stride_t,
            stride_h,
            eps,
            HAS_WEIGHT=weight is not None,
            HAS_RESIDUAL=residual is not None,
            HAS_SCALE=scale is not None,
            HAS_ROPE=rope is not None,
            BLOCK=block,
            num_warps=min(16, max(1, block // 256)),
        )
    return out


def fused_moe_epilogue(
    dense: torch.Tensor,
    experts: torch.Tensor,
    residual: torch.Tensor,
    w_dense: torch.Tensor,
    w_experts: torch.Tensor,
    w_post: torch.Tensor,
    layer_scalar: torch.Tensor,
    w_next: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TorchRMSNorm.moe_epilogue in one launch: dense [T, H] (the dense MLP's output), experts [T, H] or
    per-slot float32 rows [T, k, H], residual [T, H] -> (the layer's output, its norm with w_next)."""
    T, H = dense.shape
    dense, residual = dense.contiguous(), residual.contiguous()
    rows = experts if experts.dim() == 3 else experts.unsqueeze(1)  # [T, k, H] or [T, 1, H]
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out, nxt = torch.empty_like(dense), torch.empty_like(dense)
    if T:
        block = triton.next_power_of_2(H)
        _moe_epilogue_kernel[(T,)](
            dense,
            rows,
            residual,
            w_dense,
            w_experts,
            w_post,
            layer_scalar,
            w_next,
            out,
            nxt,
            H,
            rows.stride(0),
            rows.stride(1),
            eps,
            SLOTS=rows.shape[1],
            BLOCK=block,
            num_warps=min(16, max(1, block // 256)),
        )
    return out, nxt


def fused_layer_end(
    m: torch.Tensor,
    residual: torch.Tensor,
    w_post: torch.Tensor,
    layer_scalar: torch.Tensor,
    w_next: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TorchRMSNorm.layer_end in one launch: m, residual [T, H] -> (the layer's output, its norm with w_next)."""
    T, H = m.shape
    m, residual = m.contiguous(), residual.contiguous()
    out, nxt = torch.empty_like(m), torch.empty_like(m)
    if T:
        block = triton.next_power_of_2(H)
        _layer_end_kernel[(T,)](
            m,
            residual,
            w_post,
            layer_scalar,
            w_next,
            out,
            nxt,
            H,
            eps,
            BLOCK=block,
            num_warps=min(16, max(1, block // 256)),
        )
    return out, nxt


def fused_ffn_prologue(
    h: torch.Tensor,
    residual: torch.Tensor,
    w_post_attn: torch.Tensor,
    w_pre_ffn: torch.Tensor,
    eps: float,
    w_experts_in: torch.Tensor | None = None,
    router_scale: torch.Tensor | None = None,
):
    """TorchRMSNorm.ffn_prologue in one launch: h and residual [T, H] -> (x, mlp_in, experts_in, router_in),
    the last two None unless w_experts_in and router_scale are given."""
    T, H = h.shape
    h, residual = h.contiguous(), residual.contiguous()
    moe = w_experts_in is not None
    x, mlp_in = torch.empty_like(h), torch.empty_like(h)
    experts_in, router_in = (torch.empty_like(h), torch.empty_like(h)) if moe else (None, None)
    if T:
        block = triton.next_power_of_2(H)
        _ffn_prologue_kernel[(T,)](
            h,
            residual,
            w_post_attn,
            w_pre_ffn,
            w_experts_in if moe else w_pre_ffn,
            router_scale if moe else w_pre_ffn,
            x,
            mlp_in,
            experts_in if moe else x,
            router_in if moe else x,
            H,
            eps,
            H**-0.5,
            HAS_MOE=moe,
            BLOCK=block,
            num_warps=min(16, max(1, block // 256)),
        )
    return x, mlp_in, experts_in, router_in
