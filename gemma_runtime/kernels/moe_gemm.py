"""Fused MoE experts: a grouped GEMM over the routed (token, expert) pairs sorted by expert.

Layout. The T*k routed rows are grouped by expert and each expert's run is padded to a multiple of
BLOCK_M, so every BLOCK_M-row tile belongs to one expert (`align_by_expert`: two small kernels, no
host synchronisation; the tile count is an upper bound that depends only on T).

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
from gemma_runtime.kernels.moe_routing import topk_softmax, topk_softmax_row_tiles


@triton.jit
def _expert_layout_kernel(
    ids_ptr, run_start_ptr, fill_ptr, tile_expert_ptr, rows_ptr, n, num_tiles, num_slots,
    E: tl.constexpr, E_PAD: tl.constexpr, BLOCK_M: tl.constexpr, IDS: tl.constexpr, TILES: tl.constexpr,
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
    _expert_layout_kernel[(1,)](flat, run_start, fill, tile_expert, rows, n, num_tiles, rows.numel(), E=num_experts,
                                E_PAD=triton.next_power_of_2(num_experts), BLOCK_M=block_m, IDS=1024, TILES=32,
                                SLOTS=1024)  # fmt: skip
    block = 256
    _scatter_rows_kernel[(triton.cdiv(n, block),)](flat, run_start, fill, rows, n, BLOCK=block)
    return rows, tile_expert


@triton.jit
def _tile_rows(rows_ptr, tile, num_rows, BLOCK_M: tl.constexpr):
    """A tile's places in the layout, the routed row at each (num_rows where padding), and which are real."""
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row = tl.load(rows_ptr + offs_m)
    return offs_m, row, row < num_rows


@triton.jit
def _gate_up_kernel(
    x_ptr, w_ptr, scale_ptr, h_ptr, rows_ptr, tile_expert_ptr,
    num_rows, K, I,  # num_rows = T*k; K = hidden; I = expert intermediate
    stride_x,  # x [T, K]
    stride_we, stride_wn,  # w [E, 2I, K], K contiguous
    stride_se,  # scale [E, 2I]
    stride_h,  # h [P, I]
    TOP_K: tl.constexpr, HAS_SCALE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
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
            a = tl.load(x_ptr + token[:, None] * stride_x + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
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
        tl.store(h_ptr + offs_m[:, None] * stride_h + offs_n[None, :], h.to(h_ptr.dtype.element_ty),
                 mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _down_kernel(
    h_ptr, w_ptr, scale_ptr, out_ptr, rows_ptr, tile_expert_ptr, routing_ptr,
    num_rows, K, N,  # K = expert intermediate, N = hidden
    stride_h,  # h [P, K]
    stride_we, stride_wn,  # w [E, N, K], K contiguous
    stride_se,  # scale [E, N]
    stride_o,  # out [T*k, N]
    HAS_SCALE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
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
            a = tl.load(h_ptr + offs_m[:, None] * stride_h + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
            w = tl.load(w_base + offs_n[None, :] * stride_wn + offs_k[:, None], mask=k_mask[:, None] & n_mask[None, :], other=0.0)
            acc += dot(a, w.to(a.dtype), F32_DOT)
        if HAS_SCALE:
            acc *= tl.load(scale_ptr + expert * stride_se + offs_n, mask=n_mask, other=0.0)[None, :]
        acc *= tl.load(routing_ptr + row, mask=m_mask, other=0.0)[:, None]
        tl.store(out_ptr + row[:, None] * stride_o + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _gate_up_gemv_kernel(
    x_ptr, w_ptr, scale_ptr, h_ptr, ids_ptr,
    K, I,  # K = hidden; I = expert intermediate
    stride_x,  # x [T, K]
    stride_we, stride_wn,  # w [E, 2I, K], K contiguous
    stride_se,  # scale [E, 2I]
    stride_h,  # h [T*k, I]
    TOP_K: tl.constexpr, HAS_SCALE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """_gate_up_kernel for one routed row per program (axis 0: row t*k+j, its expert read from ids):
    the matrix-vector form of kernels/gemv.py, with no 16-row tile around a single row."""
    r = tl.program_id(0)
    expert = tl.load(ids_ptr + r)
    token = r // TOP_K
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < I
    w_base = w_ptr + expert * stride_we
    acc_g = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        a = tl.load(x_ptr + token * stride_x + offs_k, mask=k_mask, other=0.0).to(tl.float32)  # [BLOCK_K]
        w_mask = n_mask[:, None] & k_mask[None, :]
        # [BLOCK_N, BLOCK_K] rows of the gate and the matching up rows (I rows further)
        wg = tl.load(w_base + offs_n[:, None] * stride_wn + offs_k[None, :], mask=w_mask, other=0.0).to(tl.float32)
        wu = tl.load(w_base + (offs_n + I)[:, None] * stride_wn + offs_k[None, :], mask=w_mask, other=0.0).to(tl.float32)
        acc_g += wg * a[None, :]
        acc_u += wu * a[None, :]
    g = tl.sum(acc_g, 1)  # [BLOCK_N]
    u = tl.sum(acc_u, 1)
    if HAS_SCALE:
        g *= tl.load(scale_ptr + expert * stride_se + offs_n, mask=n_mask, other=0.0)
        u *= tl.load(scale_ptr + expert * stride_se + I + offs_n, mask=n_mask, other=0.0)
    tl.store(h_ptr + r * stride_h + offs_n, (gelu_tanh(g) * u).to(h_ptr.dtype.element_ty), mask=n_mask)


@triton.jit
def _down_gemv_kernel(
    h_ptr, w_ptr, scale_ptr, out_ptr, ids_ptr, routing_ptr,
    K, N,  # K = expert intermediate, N = hidden
    stride_h,  # h [T*k, K]
    stride_we, stride_wn,  # w [E, N, K], K contiguous
    stride_se,  # scale [E, N]
    stride_o,  # out [T*k, N]
    HAS_SCALE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """_down_kernel for one routed row per program, as _gate_up_gemv_kernel."""
    r = tl.program_id(0)
    expert = tl.load(ids_ptr + r)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    w_base = w_ptr + expert * stride_we
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        a = tl.load(h_ptr + r * stride_h + offs_k, mask=k_mask, other=0.0).to(tl.float32)  # [BLOCK_K]
        w = tl.load(w_base + offs_n[:, None] * stride_wn + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :],
                    other=0.0).to(tl.float32)  # [BLOCK_N, BLOCK_K]
        acc += w * a[None, :]
    y = tl.sum(acc, 1)  # [BLOCK_N]
    if HAS_SCALE:
        y *= tl.load(scale_ptr + expert * stride_se + offs_n, mask=n_mask, other=0.0)
    y *= tl.load(routing_ptr + r)
    tl.store(out_ptr + r * stride_o + offs_n, y.to(out_ptr.dtype.element_ty), mask=n_mask)


def expert_gemv_tiles(weight_bytes: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps) of the one-row expert kernels: eight weight rows per program in
    256-byte chunks (128 bf16 or 256 e4m3 values). On the H100 (`tune --kernels expert-gemv`, 2026-11-26)
    one token's 26B-A4B e4m3 experts took 35.2 us against 38.4 us with four rows in 512-byte chunks,
    the fastest of 36 candidates."""
    return 8, 256 // weight_bytes, 4


def experts_gemv(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor,
                 gate_up_scale: torch.Tensor | None = None, down_scale: torch.Tensor | None = None) -> torch.Tensor:
    """fused_experts(..., per_slot=True) for a batch of a token or two: each routed row is its own
    matrix-vector product, so no layout at all: the programs read their expert from ids.
    -> float32 per-slot rows [T, k, H]."""
    T, H = x.shape
    Ie = gate_up.shape[1] // 2
    top_k = ids.shape[1]
    block_n, block_k, warps = expert_gemv_tiles(gate_up.element_size())
    x = x.contiguous()
    flat_ids = ids.reshape(-1)  # [T*k] the expert of routed row t*k+j
    h = torch.empty((T * top_k, Ie), dtype=x.dtype, device=x.device)  # [T*k, Ie]
    _gate_up_gemv_kernel[(T * top_k, triton.cdiv(Ie, block_n))](
        x, gate_up, gate_up_scale if gate_up_scale is not None else gate_up, h, flat_ids,
        H, Ie, x.stride(0), gate_up.stride(0), gate_up.stride(1),
        gate_up_scale.stride(0) if gate_up_scale is not None else 0, h.stride(0),
        TOP_K=top_k, HAS_SCALE=gate_up_scale is not None, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
    )  # fmt: skip
    routed = torch.empty((T * top_k, H), dtype=torch.float32, device=x.device)  # [T*k, H] one row per (token, slot)
    _down_gemv_kernel[(T * top_k, triton.cdiv(H, block_n))](
        h, down, down_scale if down_scale is not None else down, routed, flat_ids, weights.reshape(-1).float().contiguous(),
        Ie, H, h.stride(0), down.stride(0), down.stride(1), down_scale.stride(0) if down_scale is not None else 0,
        routed.stride(0), HAS_SCALE=down_scale is not None, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
    )  # fmt: skip
    return routed.view(T, top_k, H)  # [T*k, H] -> [T, k, H]


# Up to this many routed rows (T*k: batch 2 at k=8), e4m3 experts run as one matrix-vector product per
# routed row (experts_gemv). Measured on an H100 (docs/benchmarks.md, 2026-11-25): in the 26B-A4B's FP8
# batch-1 decode step 0.83 ms against 1.31 ms for the 16-row tiles, which widen e4m3 to bf16 before
# tl.dot; for bf16 experts the tiles were 4-7% faster, so those keep the row-tile layout below.
# bench/tune_kernels.py's `expert-gemv-switch` re-measures both.
EXPERT_GEMV_MAX_ROWS = 16


def takes_expert_gemv(routed_rows: int, gate_up: torch.Tensor) -> bool:
    """Whether `routed_rows` (T*k) rows through experts stacked like gate_up run as experts_gemv."""
    return routed_rows <= EXPERT_GEMV_MAX_ROWS and gate_up.dtype == torch.float8_e4m3fn
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
        raise ValueError(f"the layout's tiles are not {block_m} rows: {rows.numel()} rows for {tile_expert.numel()} tiles")
    x = x.contiguous()
    h = torch.empty((rows.numel(), Ie), dtype=x.dtype, device=x.device)  # [P, Ie] in expert-sorted order
    _gate_up_kernel[(tile_expert.numel(), triton.cdiv(Ie, block_n))](
        x, gate_up, gate_up_scale if gate_up_scale is not None else gate_up, h, rows, tile_expert,
        T * top_k, H, Ie, x.stride(0), gate_up.stride(0), gate_up.stride(1),
        gate_up_scale.stride(0) if gate_up_scale is not None else 0, h.stride(0),
        TOP_K=top_k, HAS_SCALE=gate_up_scale is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        F32_DOT=interpreted(_gate_up_kernel), num_warps=warps, num_stages=stages,
    )  # fmt: skip
    routed = torch.empty((T * top_k, H), dtype=torch.float32, device=x.device)  # [T*k, H] one row per (token, slot)
    _down_kernel[(tile_expert.numel(), triton.cdiv(H, block_n))](
        h, down, down_scale if down_scale is not None else down, routed, rows, tile_expert,
        weights.reshape(-1).float().contiguous(),
        T * top_k, Ie, H, h.stride(0), down.stride(0), down.stride(1),
        down_scale.stride(0) if down_scale is not None else 0, routed.stride(0),
        HAS_SCALE=down_scale is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        F32_DOT=interpreted(_down_kernel), num_warps=warps, num_stages=stages,
    )  # fmt: skip
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
