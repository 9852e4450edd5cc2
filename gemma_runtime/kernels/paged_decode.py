"""Paged attention for decode (one query per sequence), split over the keys ("flash decoding").

Why split: at batch 1 a full-attention layer of the 26B-A4B has 2 KV heads, so one program per
(sequence, KV head) would light 2 of the H100's 132 SMs. Each program instead takes one slice of the
keys and writes a partial output with its log-sum-exp; a second tiny kernel merges the slices (a batch
large enough to fill the SMs unsplit takes one slice, written straight to the output: one launch). The
number of slices depends only on the batch shape (never on the lengths, which live on the GPU), so the
launch needs no host synchronisation and can be captured in a CUDA graph.

GQA: one program serves every query head of one KV head, so each K/V tile is read once per group; the
group is padded to 16 rows because tl.dot needs M >= 16.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gemma_runtime.kernels.common import (
    dot,
    interpreted,
    num_sms,
    online_softmax_step,
    padded_head_dim,
    rows_and_head_mask,
)


@triton.jit
def _decode_split_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    context_lens_ptr,
    part_out_ptr,
    part_lse_ptr,
    out_ptr,
    stride_qb,
    stride_qh,  # q and out [B, Hq, D], D contiguous
    stride_cs,
    stride_ch,  # caches [slots, Hkv, D], D contiguous
    stride_bt,  # block tables [B, max_pages]
    stride_pb,
    stride_ph,
    stride_ps,  # part_out [B, Hq, S, D]
    stride_lb,
    stride_lh,  # part_lse [B, Hq, S]
    window,
    block_size,  # window: used only when SLIDING
    SLIDING: tl.constexpr,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_PAD: tl.constexpr,  # HEAD_DIM rounded up to a power of two (common.padded_head_dim)
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    F32_DOT: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    ctx = tl.load(context_lens_ptr + b)
    q_pos = ctx - 1  # decode: the query is the newest token, already written to the cache
    # keys k with k > q - window on sliding layers (a compile-time branch: full layers get their own kernel)
    lo = tl.maximum(q_pos - window + 1, 0) if SLIDING else q_pos * 0
    # each split gets a whole number of key tiles; trailing splits may be empty
    per_split = tl.cdiv(tl.cdiv(ctx - lo, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = lo + split * per_split
    end = tl.minimum(start + per_split, ctx)

    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, HEAD_PAD)
    heads = kvh * GROUP + g
    g_mask = g < GROUP
    head_mask = rows_and_head_mask(g_mask, d, HEAD_DIM, HEAD_PAD)
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + d[None, :], mask=head_mask, other=0.0)

    m_i = tl.full([GROUP_PAD], -1.0e30, dtype=tl.float32)  # finite: an empty split must not make NaNs
    l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_PAD], dtype=tl.float32)
    for n0 in range(start, end, BLOCK_N):
        k_pos = n0 + tl.arange(0, BLOCK_N)
        k_mask = k_pos < end
        page = tl.load(block_tables_ptr + b * stride_bt + k_pos // block_size, mask=k_mask, other=-1)
        k_mask = k_mask & (page >= 0)
        slot = page.to(tl.int64) * block_size + k_pos % block_size
        kv_off = slot[:, None] * stride_cs + kvh * stride_ch + d[None, :]  # [BLOCK_N, D] gathered rows
        kv_mask = rows_and_head_mask(k_mask, d, HEAD_DIM, HEAD_PAD)
        k = tl.load(k_cache_ptr + kv_off, mask=kv_mask, other=0.0)
        s = dot(q, tl.trans(k), F32_DOT)  # [GROUP_PAD, BLOCK_N] float32; Gemma 4 attention scale is 1.0
        m_i, l_i, p, alpha = online_softmax_step(tl.where(k_mask[None, :], s, float("-inf")), m_i, l_i)
        v = tl.load(v_cache_ptr + kv_off, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, F32_DOT)

    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    if NUM_SPLITS == 1:  # one slice holds every key: the output itself, no partials and no merge launch
        o_rows = out_ptr + b * stride_qb + heads * stride_qh  # [GROUP_PAD]
        tl.store(o_rows[:, None] + d[None, :], out.to(out_ptr.dtype.element_ty), mask=head_mask)
    else:
        lse = tl.where(empty, float("-inf"), m_i + tl.log(tl.where(empty, 1.0, l_i)))
        base = b * stride_pb + heads * stride_ph + split * stride_ps  # [GROUP_PAD]
        tl.store(part_out_ptr + base[:, None] + d[None, :], out, mask=head_mask)
        tl.store(part_lse_ptr + b * stride_lb + heads * stride_lh + split, lse, mask=g_mask)


@triton.jit
def _decode_merge_kernel(
    part_out_ptr,
    part_lse_ptr,
    out_ptr,
    stride_pb,
    stride_ph,
    stride_ps,  # part_out [B, Hq, S, D]
    stride_lb,
    stride_lh,  # part_lse [B, Hq, S]
    stride_ob,
    stride_oh,  # out [B, Hq, D]
    HEAD_DIM: tl.constexpr,
    HEAD_PAD: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.arange(0, NUM_SPLITS)
    d = tl.arange(0, HEAD_PAD)
    lse = tl.load(part_lse_ptr + b * stride_lb + h * stride_lh + s)  # [S]
    w = tl.exp(lse - tl.max(lse, 0))  # empty splits have lse -inf: weight 0
    parts_ptrs = part_out_ptr + b * stride_pb + h * stride_ph + s[:, None] * stride_ps + d[None, :]  # [S, D]
    if HEAD_PAD == HEAD_DIM:  # compile-time: unpadded heads load and store as before, unmasked
        parts = tl.load(parts_ptrs)
    else:
        parts = tl.load(parts_ptrs, mask=(d < HEAD_DIM)[None, :], other=0.0)
    out = tl.sum(parts * w[:, None], 0) / tl.sum(w, 0)
    out_ptrs = out_ptr + b * stride_ob + h * stride_oh + d
    if HEAD_PAD == HEAD_DIM:
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty))
    else:
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=d < HEAD_DIM)


def decode_tiles(head_dim: int) -> tuple[int, int]:
    """(BLOCK_N, num_warps). Keys are gathered row by row through the block table, so every element of a
    [BLOCK_N, D] tile carries its own address. Compiled for sm_90 with the alignment the JIT sees
    (bench/compile_kernels.py, Triton 3.6): 128-142 registers, 41 KB (D=256) and 81 KB (D=512) of shared
    memory, no spills. Starting points for tuning on the GPU (bench/tune_kernels.py)."""
    return (32, 4) if head_dim <= 256 else (32, 8)


def choose_splits(batch: int, kv_heads: int, device: torch.device, max_keys: int | None) -> int:
    """Enough programs for about two waves over the SMs; never more splits than key tiles can fill."""
    want = triton.cdiv(2 * num_sms(device), batch * kv_heads)
    if max_keys is not None:
        want = min(want, triton.cdiv(max_keys, 32))
    return max(1, min(triton.next_power_of_2(want), 32))


def paged_decode_attention(
    q: torch.Tensor,  # [B, Hq, D]
    k_cache: torch.Tensor,  # [slots, Hkv, D]
    v_cache: torch.Tensor,  # [slots, Hkv, D]
    block_tables: torch.Tensor,  # [B, max_pages] int, -1 where no page
    context_lens: torch.Tensor,  # [B] keys in the cache per sequence, the query's own included
    block_size: int,
    window: int | None,  # sliding window, None for full attention
    num_splits: int | None = None,
) -> torch.Tensor:
    """softmax(q k^T) v over each sequence's cached keys (scale 1.0), causal by construction."""
    B, Hq, D = q.shape
    Hkv = k_cache.shape[1]
    group = Hq // Hkv
    block_n, warps = decode_tiles(D)
    splits = num_splits or choose_splits(B, Hkv, q.device, window)
    q = q.contiguous()
    out = torch.empty_like(q)
    # one split (a batch that fills the SMs by itself) writes `out` directly; the partials are then unused
    f32 = dict(dtype=torch.float32, device=q.device)
    part_out = torch.empty((B, Hq, splits, D) if splits > 1 else (1, 1, 1, 1), **f32)  # [B, Hq, S, D]
    part_lse = torch.empty((B, Hq, splits) if splits > 1 else (1, 1, 1), **f32)  # [B, Hq, S]
    _decode_split_kernel[(B, Hkv, splits)](
        q,
        k_cache,
        v_cache,
        block_tables,
        context_lens,
        part_out,
        part_lse,
        out,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        block_tables.stride(0),
        part_out.stride(0),
        part_out.stride(1),
        part_out.stride(2),
        part_lse.stride(0),
        part_lse.stride(1),
        window or 0,
        block_size,
        SLIDING=window is not None,
        GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=D,
        HEAD_PAD=padded_head_dim(D),
        BLOCK_N=block_n,
        NUM_SPLITS=splits,
        F32_DOT=interpreted(_decode_split_kernel),
        num_warps=warps,
        num_stages=2,
    )
    if splits == 1:
        return out
    _decode_merge_kernel[(B, Hq)](
        part_out,
        part_lse,
        out,
        part_out.stride(0),
        part_out.stride(1),
        part_out.stride(2),
        part_lse.stride(0),
        part_lse.stride(1),
        out.stride(0),
        out.stride(1),
        HEAD_DIM=D,
        HEAD_PAD=padded_head_dim(D),
        NUM_SPLITS=splits,
        num_warps=4,
    )
    return out
