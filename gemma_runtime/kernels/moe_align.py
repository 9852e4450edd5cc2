"""Expert alignment for the fused MoE GEMMs (kernels/moe_gemm.py): the T*k routed rows grouped by expert,
each expert's run padded to a multiple of BLOCK_M so every BLOCK_M-row tile belongs to one expert. Two small
kernels (count and lay out the runs in one program, then an atomic scatter), no host synchronisation."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _expert_layout_kernel(
    ids_ptr,
    run_start_ptr,
    fill_ptr,
    tile_expert_ptr,
    rows_ptr,
    n,
    num_tiles,
    num_slots,
    E: tl.constexpr,
    E_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    IDS: tl.constexpr,
    TILES: tl.constexpr,
    SLOTS: tl.constexpr,
):
    """One program: rows per expert (a histogram, so no counters to zero first), each expert's run rounded
    up to whole tiles, where each run starts, each tile's expert (-1 past the last run), every row slot
    marked as padding (n), and the scatter's fill counters set to zero."""
    e = tl.arange(0, E_PAD)
    e_mask = e < E
    counts = tl.zeros([E_PAD], dtype=tl.int32)
    for i0 in range(0, n, IDS):
        offs = i0 + tl.arange(0, IDS)
        in_range = offs < n
        ids = tl.load(ids_ptr + offs, mask=in_range, other=0).to(tl.int32)
        counts += tl.histogram(ids, E_PAD, mask=in_range)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    run_end = tl.cumsum(padded, 0)  # [E_PAD]
    tl.store(run_start_ptr + e, run_end - padded, mask=e_mask)
    tl.store(fill_ptr + e, counts * 0, mask=e_mask)
    total = tl.sum(padded, 0)
    for t0 in range(0, num_tiles, TILES):
        t = t0 + tl.arange(0, TILES)
        start = t * BLOCK_M
        # the tile's expert: how many runs end at or before its first row (a searchsorted over 128 ends)
        expert = tl.sum(((run_end[None, :] <= start[:, None]) & e_mask[None, :]).to(tl.int64), 1)
        tl.store(tile_expert_ptr + t, tl.where(start < total, expert, -1), mask=t < num_tiles)
    for s0 in range(0, num_slots, SLOTS):
        slot = s0 + tl.arange(0, SLOTS)
        tl.store(rows_ptr + slot, (slot * 0 + n).to(tl.int64), mask=slot < num_slots)


@triton.jit
def _scatter_rows_kernel(ids_ptr, run_start_ptr, fill_ptr, rows_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    expert = tl.load(ids_ptr + offs, mask=mask, other=0)
    place = tl.atomic_add(fill_ptr + expert, 1, mask=mask)  # its place in the expert's run
    tl.store(rows_ptr + tl.load(run_start_ptr + expert, mask=mask, other=0) + place, offs.to(tl.int64), mask=mask)


def align_by_expert(ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [T, k] -> (rows [P] int64: flat routed row t*k+j grouped by expert, T*k where padding;
    tile_expert [P / block_m] int64: each tile's expert, -1 for tiles past the end).

    Two small kernels (count and lay out the runs in one program, then scatter) instead of a dozen torch
    ops, neither of which reads anything back to the host. Within an expert's run the rows land in
    whatever order the atomic counter hands out places; that order changes nothing, since every row of
    a tile is computed on its own and written to its own (token, slot) place."""
    flat = ids.flatten()  # [N = T*k]
    n = flat.numel()
    # every expert's run rounds up to whole tiles: at most n / block_m full tiles plus one partial per expert hit
    num_tiles = triton.cdiv(n, block_m) + min(num_experts, n)
    run_start = torch.empty(num_experts, dtype=torch.int32, device=flat.device)
    fill = torch.empty(num_experts, dtype=torch.int32, device=flat.device)  # zeroed by the layout kernel
    rows = torch.empty(num_tiles * block_m, dtype=torch.int64, device=flat.device)
    tile_expert = torch.empty(num_tiles, dtype=torch.int64, device=flat.device)
    if n == 0:
        return rows, tile_expert
    _expert_layout_kernel[(1,)](
        flat,
        run_start,
        fill,
        tile_expert,
        rows,
        n,
        num_tiles,
        rows.numel(),
        E=num_experts,
        E_PAD=triton.next_power_of_2(num_experts),
        BLOCK_M=block_m,
        IDS=1024,
        TILES=32,
        SLOTS=1024,
    )
    block = 256
    _scatter_rows_kernel[(triton.cdiv(n, block),)](flat, run_start, fill, rows, n, BLOCK=block)
    return rows, tile_expert
