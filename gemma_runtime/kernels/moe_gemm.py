"""Fused MoE experts: a grouped GEMM over the routed (token, expert) pairs sorted by expert.

Layout. The T*k routed rows are grouped by expert and each expert's run is padded to a multiple of
BLOCK_M, so every BLOCK_M-row tile belongs to one expert (`align_by_expert`: two small kernels, no
host synchronisation; the tile count is an upper bound that depends only on T; kernels/moe_align.py).
For a token or two of e4m3 experts, routed_experts takes the one-row form instead (kernels/moe_gemv.py).

Two kernels:
  1. gate_up: h = gelu_tanh(x W_gate^T) * (x W_up^T). One program computes the gate tile and the matching
     up tile, so the GEGLU happens in registers and the [rows, 2Ie] intermediate never reaches memory.
  2. down: y = (h W_down^T) * routing weight, written to the row's own (token, slot) place; the k slots
     of a token are then summed by torch (deterministic, no atomics).

FP8 weights (W8A16): e4m3 weight tiles are widened to the activation dtype after the load and the
per-output-row scale is applied to the accumulator. Decode is bound by reading expert weights, so
half the bytes is what matters; the fp8 x fp8 tensor-core path is a further step.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gemma_runtime.kernels.common import dot, gelu_tanh, interpreted
from gemma_runtime.kernels.moe_align import align_by_expert
from gemma_runtime.kernels.moe_gemv import experts_gemv, takes_expert_gemv
from gemma_runtime.kernels.moe_routing import topk_softmax, topk_softmax_row_tiles


@triton.jit
def _tile_rows(rows_ptr, tile, num_rows, BLOCK_M: tl.constexpr):
    """A tile's places in the layout, the routed row at each (num_rows where padding), and which are real."""
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row = tl.load(rows_ptr + offs_m)
    return offs_m, row, row < num_rows


@triton.jit
def _gate_up_kernel(
    x_ptr,
    w_ptr,
    scale_ptr,
    h_ptr,
    rows_ptr,
    tile_expert_ptr,
    num_rows,
    K,
    I,  # num_rows = T*k; K = hidden; I = expert intermediate
    stride_x,  # x [T, K]
    stride_we,
    stride_wn,  # w [E, 2I, K], K contiguous
    stride_se,  # scale [E, 2I]
    stride_h,  # h [P, I]
    TOP_K: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    F32_DOT: tl.constexpr,
):
    tile = tl.program_id(0)
    expert = tl.load(tile_expert_ptr + tile)
    if expert >= 0:
        offs_m, row, m_mask = _tile_rows(rows_ptr, tile, num_rows, BLOCK_M)
        token = row // TOP_K  # routed row t*k+j reads token t's activations
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = offs_n < I
        w_base = w_ptr + expert * stride_we
        acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_mask = offs_k < K
            a = tl.load(
                x_ptr + token[:, None] * stride_x + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0
            )
            w_mask = k_mask[:, None] & n_mask[None, :]
            # [BLOCK_K, BLOCK_N] tiles of the gate rows and of the matching up rows (I rows further)
            wg = tl.load(w_base + offs_n[None, :] * stride_wn + offs_k[:, None], mask=w_mask, other=0.0)
            wu = tl.load(w_base + (offs_n + I)[None, :] * stride_wn + offs_k[:, None], mask=w_mask, other=0.0)
            acc_g += dot(a, wg.to(a.dtype), F32_DOT)
            acc_u += dot(a, wu.to(a.dtype), F32_DOT)
        if HAS_SCALE:
            acc_g *= tl.load(scale_ptr + expert * stride_se + offs_n, mask=n_mask, other=0.0)[None, :]
            acc_u *= tl.load(scale_ptr + expert * stride_se + I + offs_n, mask=n_mask, other=0.0)[None, :]
        h = gelu_tanh(acc_g) * acc_u
        tl.store(
            h_ptr + offs_m[:, None] * stride_h + offs_n[None, :],
            h.to(h_ptr.dtype.element_ty),
            mask=m_mask[:, None] & n_mask[None, :],
        )


@triton.jit
def _down_kernel(
    h_ptr,
    w_ptr,
    scale_ptr,
    out_ptr,
    rows_ptr,
    tile_expert_ptr,
    routing_ptr,
    num_rows,
    K,
    N,  # K = expert intermediate, N = hidden
    stride_h,  # h [P, K]
    stride_we,
    stride_wn,  # w [E, N, K], K contiguous
    stride_se,  # scale [E, N]
    stride_o,  # out [T*k, N]
    HAS_SCALE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    F32_DOT: tl.constexpr,
):
    tile = tl.program_id(0)
    expert = tl.load(tile_expert_ptr + tile)
    if expert >= 0:
        offs_m, row, m_mask = _tile_rows(rows_ptr, tile, num_rows, BLOCK_M)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        w_base = w_ptr + expert * stride_we
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_mask = offs_k < K
            a = tl.load(
                h_ptr + offs_m[:, None] * stride_h + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0
            )
            w = tl.load(
                w_base + offs_n[None, :] * stride_wn + offs_k[:, None],
                mask=k_mask[:, None] & n_mask[None, :],
                other=0.0,
            )
            acc += dot(a, w.to(a.dtype), F32_DOT)
        if HAS_SCALE:
            acc *= tl.load(scale_ptr + expert * stride_se + offs_n, mask=n_mask, other=0.0)[None, :]
        acc *= tl.load(routing_ptr + row, mask=m_mask, other=0.0)[:, None]
        tl.store(
            out_ptr + row[:, None] * stride_o + offs_n[None, :],
            acc.to(out_ptr.dtype.element_ty),
            mask=m_mask[:, None] & n_mask[None, :],
        )


# Up to this many routed rows (T*k: batch 2 at k=8) each row gets its own tile, laid out by the router
# kernel: two launches fewer than align_by_expert, and with k distinct experts per token few expert
# weights are read twice (two tokens of 8 picks among 128 share ~0.9 experts).
ROW_TILE_MAX_ROWS = 16


def expert_tiles(num_tokens: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). Decode routes ~k rows per expert hit, so a
    16-row tile wastes the least padding (tl.dot's minimum); prefill has hundreds of rows per expert and
    wants 64-row tiles for operand reuse. 64-wide N and K divide the 26B-A4B's 2816 and 704. Triton's
    default 4 warps and 3 stages; bench/tune_kernels.py times the alternatives on the GPU."""
    return (16, 64, 64, 4, 3) if num_tokens <= 64 else (64, 64, 64, 4, 3)


def fused_experts(
    x: torch.Tensor,  # [T, H]
    weights: torch.Tensor,  # [T, k] routing weights
    ids: torch.Tensor,  # [T, k] expert ids
    gate_up: torch.Tensor,  # [E, 2Ie, H] (bf16/fp32, or float8_e4m3fn with gate_up_scale)
    down: torch.Tensor,  # [E, H, Ie]
    gate_up_scale: torch.Tensor | None = None,  # [E, 2Ie] float32 per output row
    down_scale: torch.Tensor | None = None,  # [E, H] float32 per output row
    per_slot: bool = False,
    layout: tuple[torch.Tensor, torch.Tensor] | None = None,  # (rows, tile_expert) made with expert_tiles(T)'s BLOCK_M
) -> torch.Tensor:
    """[T, H] in x's dtype; with per_slot, the float32 rows [T, k, H] before the sum over a token's k experts
    (the decoder's MoE epilogue sums them inside its norm kernel). Without a layout, align_by_expert
    makes one."""
    T, H = x.shape
    E, two_i, _ = gate_up.shape
    Ie = two_i // 2
    top_k = ids.shape[1]
    block_m, block_n, block_k, warps, stages = expert_tiles(T)
    rows, tile_expert = layout if layout is not None else align_by_expert(ids, E, block_m)
    if rows.numel() != tile_expert.numel() * block_m:
        raise ValueError(
            f"the layout's tiles are not {block_m} rows: {rows.numel()} rows for {tile_expert.numel()} tiles"
        )
    x = x.contiguous()
    h = torch.empty((rows.numel(), Ie), dtype=x.dtype, device=x.device)  # [P, Ie] in expert-sorted order
    _gate_up_kernel[(tile_expert.numel(), triton.cdiv(Ie, block_n))](
        x,
        gate_up,
        gate_up_scale if gate_up_scale is not None else gate_up,
        h,
        rows,
        tile_expert,
        T * top_k,
        H,
        Ie,
        x.stride(0),
        gate_up.stride(0),
        gate_up.stride(1),
        gate_up_scale.stride(0) if gate_up_scale is not None else 0,
        h.stride(0),
        TOP_K=top_k,
        HAS_SCALE=gate_up_scale is not None,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        F32_DOT=interpreted(_gate_up_kernel),
        num_warps=warps,
        num_stages=stages,
    )
    routed = torch.empty((T * top_k, H), dtype=torch.float32, device=x.device)  # [T*k, H] one row per (token, slot)
    _down_kernel[(tile_expert.numel(), triton.cdiv(H, block_n))](
        h,
        down,
        down_scale if down_scale is not None else down,
        routed,
        rows,
        tile_expert,
        weights.reshape(-1).float().contiguous(),
        T * top_k,
        Ie,
        H,
        h.stride(0),
        down.stride(0),
        down.stride(1),
        down_scale.stride(0) if down_scale is not None else 0,
        routed.stride(0),
        HAS_SCALE=down_scale is not None,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        F32_DOT=interpreted(_down_kernel),
        num_warps=warps,
        num_stages=stages,
    )
    if per_slot:
        return routed.view(T, top_k, H)  # [T, k, H]
    return routed.view(T, top_k, H).sum(1).to(x.dtype)  # [T, k, H] -> [T, H]


def routed_experts(
    x: torch.Tensor,  # [T, H]
    logits: torch.Tensor,  # [T, E] the router's output
    top_k: int,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    gate_up_scale: torch.Tensor | None = None,
    down_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Routing (softmax over all experts, top-k, renormalise) and the experts -> float32 per-slot rows
    [T, k, H]. Where takes_expert_gemv says so each routed row is a matrix-vector product; else up to
    ROW_TILE_MAX_ROWS the router kernel also lays out one tile per row (with the same BLOCK_M
    fused_experts takes), so align_by_expert is skipped."""
    T = x.shape[0]
    if takes_expert_gemv(T * top_k, gate_up):
        weights, ids = topk_softmax(logits, top_k)
        return experts_gemv(x, weights, ids, gate_up, down, gate_up_scale, down_scale)
    if T * top_k <= ROW_TILE_MAX_ROWS:
        weights, ids, layout = topk_softmax_row_tiles(logits, top_k, block_m=expert_tiles(T)[0])
    else:
        (weights, ids), layout = topk_softmax(logits, top_k), None
    return fused_experts(x, weights, ids, gate_up, down, gate_up_scale, down_scale, per_slot=True, layout=layout)
