"""The one-row form of the fused MoE experts (kernels/moe_gemm.py): for a token or two, each routed row is
its own matrix-vector product, its expert read from the routing ids (no layout at all), and the policy
(`takes_expert_gemv`) that decides when routed_experts takes it."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gemma_runtime.kernels.common import gelu_tanh


@triton.jit
def _gate_up_gemv_kernel(
    x_ptr,
    w_ptr,
    scale_ptr,
    h_ptr,
    ids_ptr,
    K,
    I,  # K = hidden; I = expert intermediate
    stride_x,  # x [T, K]
    stride_we,
    stride_wn,  # w [E, 2I, K], K contiguous
    stride_se,  # scale [E, 2I]
    stride_h,  # h [T*k, I]
    TOP_K: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
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
        wu = tl.load(w_base + (offs_n + I)[:, None] * stride_wn + offs_k[None, :], mask=w_mask, other=0.0).to(
            tl.float32
        )
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
    h_ptr,
    w_ptr,
    scale_ptr,
    out_ptr,
    ids_ptr,
    routing_ptr,
    K,
    N,  # K = expert intermediate, N = hidden
    stride_h,  # h [T*k, K]
    stride_we,
    stride_wn,  # w [E, N, K], K contiguous
    stride_se,  # scale [E, N]
    stride_o,  # out [T*k, N]
    HAS_SCALE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
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
        w = tl.load(
            w_base + offs_n[:, None] * stride_wn + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0
        ).to(tl.float32)  # [BLOCK_N, BLOCK_K]
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


def experts_gemv(
    x: torch.Tensor,
    weights: torch.Tensor,
    ids: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    gate_up_scale: torch.Tensor | None = None,
    down_scale: torch.Tensor | None = None,
) -> torch.Tensor:
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
        x,
        gate_up,
        gate_up_scale if gate_up_scale is not None else gate_up,
        h,
        flat_ids,
        H,
        Ie,
        x.stride(0),
        gate_up.stride(0),
        gate_up.stride(1),
        gate_up_scale.stride(0) if gate_up_scale is not None else 0,
        h.stride(0),
        TOP_K=top_k,
        HAS_SCALE=gate_up_scale is not None,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        num_warps=warps,
    )
    routed = torch.empty((T * top_k, H), dtype=torch.float32, device=x.device)  # [T*k, H] one row per (token, slot)
    _down_gemv_kernel[(T * top_k, triton.cdiv(H, block_n))](
        h,
        down,
        down_scale if down_scale is not None else down,
        routed,
        flat_ids,
        weights.reshape(-1).float().contiguous(),
        Ie,
        H,
        h.stride(0),
        down.stride(0),
        down.stride(1),
        down_scale.stride(0) if down_scale is not None else 0,
        routed.stride(0),
        HAS_SCALE=down_scale is not None,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        num_warps=warps,
    )
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
