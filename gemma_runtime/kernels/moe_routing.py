"""Gemma 4 router tail fused in one kernel: softmax over ALL experts, top-k, renormalise.

One program per token: a row of 128 logits fits in registers, and doing the three steps in one pass
replaces the four launches (softmax, topk, sum, divide) the reference path makes per layer.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _route_kernel(
    logits_ptr,
    weights_ptr,
    ids_ptr,
    rows_ptr,
    tile_expert_ptr,
    stride_l,
    num_rows,  # logits [T, E]; weights, ids [T, TOP_K]
    E: tl.constexpr,
    E_PAD: tl.constexpr,
    TOP_K: tl.constexpr,
    ROW_TILES: tl.constexpr,
):
    t = tl.program_id(0)
    e = tl.arange(0, E_PAD)
    x = tl.load(logits_ptr + t * stride_l + e, mask=e < E, other=float("-inf")).to(tl.float32)
    p = tl.exp(x - tl.max(x, 0))
    p = p / tl.sum(p, 0)  # probabilities over every expert, before the top-k cut
    # top-k by k rounds of argmax: k is 8 and E 128, cheaper than a sort; pass 1 finds the kept mass
    left = p
    kept = tl.sum(p, 0) * 0.0  # a float32 scalar tensor from the start: its type never changes
    for _ in tl.static_range(TOP_K):
        best = tl.argmax(left, 0)
        kept += tl.max(left, 0)
        left = tl.where(e == best, -1.0, left)
    left = p
    for i in tl.static_range(TOP_K):
        best = tl.argmax(left, 0)
        tl.store(weights_ptr + t * TOP_K + i, tl.max(left, 0) / kept)
        tl.store(ids_ptr + t * TOP_K + i, best.to(tl.int64))
        if ROW_TILES > 0:
            # the expert kernels' layout with one tile per routed row: row t*k+i first, padding after it
            r = t * TOP_K + i
            j = tl.arange(0, ROW_TILES)
            tl.store(rows_ptr + r * ROW_TILES + j, tl.where(j == 0, r, num_rows).to(tl.int64))
            tl.store(tile_expert_ptr + r, best.to(tl.int64))
        left = tl.where(e == best, -1.0, left)


def _launch_route(logits: torch.Tensor, top_k: int, row_tiles: int):
    T, E = logits.shape
    weights = torch.empty((T, top_k), dtype=torch.float32, device=logits.device)
    ids = torch.empty((T, top_k), dtype=torch.int64, device=logits.device)
    rows = torch.empty(T * top_k * row_tiles, dtype=torch.int64, device=logits.device)
    tile_expert = torch.empty(T * top_k if row_tiles else 0, dtype=torch.int64, device=logits.device)
    if T:
        _route_kernel[(T,)](
            logits,
            weights,
            ids,
            rows if row_tiles else ids,
            tile_expert if row_tiles else ids,
            logits.stride(0),
            T * top_k,
            E=E,
            E_PAD=triton.next_power_of_2(E),
            TOP_K=top_k,
            ROW_TILES=row_tiles,
            num_warps=1,
        )
    return weights, ids, rows, tile_expert


def topk_softmax(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [T, E] -> (weights [T, k] float32 renormalised, ids [T, k] int64), largest first."""
    weights, ids, _, _ = _launch_route(logits, top_k, 0)
    return weights, ids


def topk_softmax_row_tiles(logits: torch.Tensor, top_k: int, block_m: int):
    """topk_softmax, and (rows [T*k*block_m], tile_expert [T*k]): the expert kernels' layout with one
    block_m-row tile per routed row, which a batch of one or two tokens (k distinct experts each) wants
    instead of align_by_expert's two launches. Same launch."""
    weights, ids, rows, tile_expert = _launch_route(logits, top_k, block_m)
    return weights, ids, (rows, tile_expert)
