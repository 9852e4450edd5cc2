"""Linear layers for one to four rows (decode at batch 1 to 4): bf16 or e4m3 weights, read once.

At a handful of rows a linear layer's time is the time to read its weight. The W8A16 kernel pads its
rows to tl.dot's 16 and, for narrow outputs, splits K and adds the partial sums in two more launches.
Here each program owns BLOCK_N weight rows and streams them along K in BLOCK_K-wide chunks (K
contiguous: 16-byte loads), multiplies by the activation rows in float32 and accumulates elementwise,
reducing over K once at the end: no tensor cores, no shared memory, no split of K. An FP8 weight is
widened in registers and its per-row scale applied once to the sum, as in the W8A16 kernel.

On the H100 (docs/benchmarks.md) it ran the 26B-A4B's four FP8 linears in 1.34 ms of a batch-1 decode
step against 1.46 ms for W8A16 with its sums; on the 31B's larger weights, at four rows, and against
cuBLAS on bf16 weights it was slower. linear.takes_gemv holds that choice; bench/tune_kernels.py
(`gemv`, `gemv-switch`) re-measures it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_ROWS = 4  # the accumulator holds BLOCK_M x BLOCK_N x BLOCK_K float32s per program


@triton.jit
def _gemv_kernel(
    x_ptr,
    w_ptr,
    scale_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,  # x [M, K], K contiguous
    stride_wn,  # w [N, K] bf16 or e4m3, K contiguous
    stride_om,  # out [M, N], N contiguous
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HAS_SCALE: tl.constexpr,
):
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    acc = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        w = tl.load(
            w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0
        ).to(tl.float32)  # [BLOCK_N, BLOCK_K]
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0
        ).to(tl.float32)  # [BLOCK_M, BLOCK_K]
        acc += w[None, :, :] * x[:, None, :]  # [BLOCK_M, BLOCK_N, BLOCK_K]
    out = tl.sum(acc, axis=2)  # [BLOCK_M, BLOCK_N]
    if HAS_SCALE:
        out *= tl.load(scale_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
    tl.store(
        out_ptr + offs_m[:, None] * stride_om + offs_n[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=m_mask[:, None] & n_mask[None, :],
    )


def gemv_tiles(rows: int, weight_bytes: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps): a chunk of 1 KB per weight row (512 bf16 or 1,024 e4m3 values) and
    four rows per program; with more activation rows, fewer weight rows keep the float32 accumulator at
    2,048-4,096 values. One row (what the runtime sends here) takes 2 warps: on the H100
    (`tune --kernels gemv`, 2026-11-26) the 26B-A4B's four e4m3 linears took 35.1 us together against
    43.7 us with 4 warps, the fastest of 45 candidates summed over the four shapes."""
    block_k = 1024 // weight_bytes
    return (4 if rows <= 2 else 2), block_k, (2 if rows == 1 else 4)


def gemv_linear(x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] (at most MAX_ROWS rows) @ w [N, K]^T (bf16, or e4m3 with per-row float32 w_scale [N])
    -> [..., N] in x's dtype."""
    K = x.shape[-1]
    N = w.shape[0]
    x2 = x.reshape(-1, K).contiguous()  # [M, K]
    M = x2.shape[0]
    if M > MAX_ROWS:
        raise ValueError(f"gemv_linear takes at most {MAX_ROWS} rows, got {M}")
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M:
        block_n, block_k, warps = gemv_tiles(M, w.element_size())
        _gemv_kernel[(triton.cdiv(N, block_n),)](
            x2,
            w,
            w_scale if w_scale is not None else w,
            out,
            M,
            N,
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
    return out.view(*x.shape[:-1], N)
