"""Paged attention for prefill and chunked-prefill "extend" steps: variable-length queries per sequence,
keys read through the block table (the chunk's own K/V already written), causal + sliding window.

Image spans: on sliding layers the tokens of one image attend to each other both ways. Each query row
may carry the [start, end) of the span it lies in (span_bounds); its keys are then the causal ones OR
those of its span, AND inside the window (the reference's rule, model/attention.py). A chunk never
splits a span, so the span's later keys are in the cache when the kernel runs.

One program computes a BLOCK_M-row tile of one sequence's queries for one query head, streaming key
tiles with an online softmax (FlashAttention-2 order). The query tiles of a sequence are consecutive
positions, so each tile's key range is known from its first and last position: [first - window + 1, last].
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gemma_runtime.kernels.common import dot, interpreted, online_softmax_step, padded_head_dim, rows_and_head_mask


@triton.jit
def _prefill_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
    block_tables_ptr,
    query_start_ptr,
    positions_ptr,
    span_ptr,
    stride_qt,
    stride_qh,  # q and out [T, Hq, D], D contiguous; span_ptr [T, 2] (only read when HAS_SPANS)
    stride_cs,
    stride_ch,  # caches [slots, Hkv, D], D contiguous
    stride_bt,  # block tables [B, max_pages]
    window,
    block_size,  # window: used only when SLIDING
    SLIDING: tl.constexpr,
    HAS_SPANS: tl.constexpr,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_PAD: tl.constexpr,  # HEAD_DIM rounded up to a power of two (common.padded_head_dim)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    F32_DOT: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    tile = tl.program_id(2)
    kvh = h // GROUP
    q_lo = tl.load(query_start_ptr + b)
    q_hi = tl.load(query_start_ptr + b + 1)
    row0 = q_lo + tile * BLOCK_M
    if row0 < q_hi:  # the grid is sized for the longest query run; shorter sequences skip tiles
        rows = row0 + tl.arange(0, BLOCK_M)
        r_mask = rows < q_hi
        d = tl.arange(0, HEAD_PAD)
        q_pos = tl.load(positions_ptr + rows, mask=r_mask, other=0)
        last = tl.max(tl.where(r_mask, q_pos, 0), 0)
        first = tl.load(positions_ptr + row0)
        lo = tl.maximum(first - window + 1, 0) if SLIDING else first * 0  # compile-time branch
        row_mask = rows_and_head_mask(r_mask, d, HEAD_DIM, HEAD_PAD)
        q = tl.load(q_ptr + rows[:, None] * stride_qt + h * stride_qh + d[None, :], mask=row_mask, other=0.0)
        if HAS_SPANS:
            span_lo = tl.load(span_ptr + rows * 2, mask=r_mask, other=0)
            span_hi = tl.load(span_ptr + rows * 2 + 1, mask=r_mask, other=0)  # (0, 0): not in an image
            key_end = tl.maximum(last, tl.max(span_hi, 0) - 1)  # a span's later keys are visible too
        else:
            key_end = last

        m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)  # finite: padding rows see no key, no NaN
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_PAD], dtype=tl.float32)
        for n0 in range(lo, key_end + 1, BLOCK_N):
            k_pos = n0 + tl.arange(0, BLOCK_N)
            k_in = k_pos <= key_end
            page = tl.load(block_tables_ptr + b * stride_bt + k_pos // block_size, mask=k_in, other=-1)
            k_in = k_in & (page >= 0)
            slot = page.to(tl.int64) * block_size + k_pos % block_size
            kv_off = slot[:, None] * stride_cs + kvh * stride_ch + d[None, :]  # [BLOCK_N, D] gathered rows
            kv_mask = rows_and_head_mask(k_in, d, HEAD_DIM, HEAD_PAD)
            k = tl.load(k_cache_ptr + kv_off, mask=kv_mask, other=0.0)
            s = dot(q, tl.trans(k), F32_DOT)  # [BLOCK_M, BLOCK_N] float32, scale 1.0
            visible = k_pos[None, :] <= q_pos[:, None]
            if HAS_SPANS:
                visible = visible | ((k_pos[None, :] >= span_lo[:, None]) & (k_pos[None, :] < span_hi[:, None]))
            allowed = k_in[None, :] & visible & r_mask[:, None]
            if SLIDING:
                allowed = allowed & (k_pos[None, :] > q_pos[:, None] - window)
            m_i, l_i, p, alpha = online_softmax_step(tl.where(allowed, s, float("-inf")), m_i, l_i)
            v = tl.load(v_cache_ptr + kv_off, mask=kv_mask, other=0.0)
            acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, F32_DOT)
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(
            out_ptr + rows[:, None] * stride_qt + h * stride_qh + d[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=row_mask,
        )


def prefill_tiles(head_dim: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages). Shared memory is not the limit here (66 KB at most, far
    under the 227 KB that stopped FlexAttention's default tiles at D=512, design.md): registers are,
    because the gathered K/V tiles carry one address per element and the accumulator is BLOCK_M x D
    float32. Compiled for sm_90 with the alignment the JIT sees (bench/compile_kernels.py, Triton 3.6):
    D=256 with 64x32 tiles and 8 warps uses Hopper's warpgroup MMA (HGMMA), 224-232 registers, 96 KB of
    shared memory; D=512 with 32x16 tiles HMMA, 204-252 registers; no spills. Starting points for
    tuning on the GPU (bench/tune_kernels.py)."""
    return (64, 32, 8, 2) if head_dim <= 256 else (32, 16, 8, 2)


def paged_prefill_attention(
    q: torch.Tensor,  # [T, Hq, D]
    k_cache: torch.Tensor,  # [slots, Hkv, D]
    v_cache: torch.Tensor,  # [slots, Hkv, D]
    block_tables: torch.Tensor,  # [B, max_pages] int, -1 where no page
    query_start: torch.Tensor,  # [B + 1]
    positions: torch.Tensor,  # [T] absolute positions; each sequence's run is consecutive
    max_query_len: int,
    block_size: int,
    window: int | None,
    span_bounds: torch.Tensor | None = None,  # [T, 2] int64: each query's image span [start, end), (0, 0) if none
) -> torch.Tensor:
    T, Hq, D = q.shape
    Hkv = k_cache.shape[1]
    block_m, block_n, warps, stages = prefill_tiles(D)
    q = q.contiguous()
    out = torch.empty_like(q)
    grid = (query_start.shape[0] - 1, Hq, triton.cdiv(max_query_len, block_m))
    _prefill_kernel[grid](
        q,
        k_cache,
        v_cache,
        out,
        block_tables,
        query_start,
        positions,
        span_bounds if span_bounds is not None else positions,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        block_tables.stride(0),
        window or 0,
        block_size,
        SLIDING=window is not None,
        HAS_SPANS=span_bounds is not None,
        GROUP=Hq // Hkv,
        HEAD_DIM=D,
        HEAD_PAD=padded_head_dim(D),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        F32_DOT=interpreted(_prefill_kernel),
        num_warps=warps,
        num_stages=stages,
    )
    return out
