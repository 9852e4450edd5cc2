"""FP8-weight linear layers for small batches (decode): W8A16, e4m3 weights widened in registers.

A decode step multiplies a handful of rows by every weight matrix, so its time is the time to read the
weights. torch._scaled_mm reads the same e4m3 bytes but needs the activations in e4m3 as well, and
quantizing them per token costs about seven small kernels per linear layer (abs, amax, clamp, divide,
clamp, cast...): on the 26B-A4B in FP8 that is some 840 kernels per decode step beside ~120 GEMMs.
This kernel instead loads e4m3 weight tiles, widens them to the activation dtype, accumulates in
float32 and applies the per-output-row scale once: one launch per layer, and no activation rounding.
Large batches (prefill) are compute-bound and go to torch._scaled_mm's FP8 tensor cores instead
(model/linear.py decides by the number of rows).

When the output tiles alone cannot fill the GPU (a few rows by a narrow N), the K dimension is split
across programs whose float32 partial sums are added afterwards (deterministic, no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gemma_runtime.kernels.common import dot, interpreted, num_sms


@triton.jit
def _w8a16_kernel(
    x_ptr,
    w_ptr,
    scale_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,  # x [M, K], K contiguous
    stride_wn,  # w [N, K] e4m3, K contiguous
    stride_os,
    stride_om,  # out [SPLIT_K, M, N] (split stride unused when SPLIT_K == 1), N contiguous
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    F32_DOT: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    per_split = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K  # whole K tiles per split
    k_start = pid_k * per_split
    k_end = tl.minimum(k_start + per_split, K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < k_end
        a = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0
        )
        w = tl.load(
            w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None], mask=k_mask[:, None] & n_mask[None, :], other=0.0
        )
        acc += dot(a, w.to(a.dtype), F32_DOT)  # [BLOCK_M, BLOCK_K] x [BLOCK_K, BLOCK_N]
    acc *= tl.load(scale_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
    tl.store(
        out_ptr + pid_k * stride_os + offs_m[:, None] * stride_om + offs_n[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=m_mask[:, None] & n_mask[None, :],
    )


# 64-row tiles of weights larger than this take [128, 128] weight tiles with 8 warps, smaller ones
# [64, 128] with 4: the line falls between the 26B-A4B's o_proj and gate_up (12M values) and its
# qkv_proj (23M), where the H100's timings turned over (w8a16_tiles).
W8A16_WIDE_TILE_MIN_WEIGHT = 1 << 24


def w8a16_tiles(rows: int, weight_numel: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps) for `rows` rows against an [N, K] weight of weight_numel
    values. 16 rows is tl.dot's minimum and a decode batch's usual size. Measured on the H100
    (`tune --kernels w8a16`, 2026-11-26, 12 candidates for each of the four linears of each model):
    - up to 16 rows a narrow, deep [32, 256] e4m3 tile (8 KB) with 4 warps was fastest or within 7% on
      all eight shapes: the 31B's four took 196 us at one row against 209 us with [64, 128] tiles, the
      26B-A4B's 49.8 us at 16 rows against 50.8;
    - at 64 rows the 31B's weights (44-231M values) were fastest or within 5% with [128, 128] tiles and
      8 warps (331 us against 370 us with [64, 128]), while with them three of the 26B-A4B's smaller
      ones were 8-26% slower than with their best candidate: 72.5 us for its four with this split,
      79.0 with [128, 128] for all, 74.5 with the earlier [64, 128] and 8 warps for all.
    Compiled for sm_90 with the alignment the JIT sees (bench/compile_kernels.py, Triton 3.6): no spills."""
    if rows <= 16:
        return 16, 32, 256, 4
    return (64, 128, 128, 8) if weight_numel > W8A16_WIDE_TILE_MIN_WEIGHT else (64, 64, 128, 4)


def choose_split_k(rows: int, n: int, k: int, device: torch.device) -> int:
    """Splits of K so that output tiles x splits make about two waves over the SMs, each split keeping
    at least four K tiles (fewer and the partial sums cost more than the parallelism gives)."""
    block_m, block_n, block_k, _ = w8a16_tiles(rows, n * k)
    tiles = triton.cdiv(rows, block_m) * triton.cdiv(n, block_n)
    want = triton.cdiv(2 * num_sms(device), tiles)
    most = max(1, triton.cdiv(k, block_k) // 4)
    return max(1, min(want, most, 16))


def w8a16_linear(x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor, split_k: int | None = None) -> torch.Tensor:
    """x [..., K] (bf16/fp16/fp32) @ dequant(w [N, K] e4m3, w_scale [N] float32)^T -> [..., N] in x's dtype."""
    K = x.shape[-1]
    N = w.shape[0]
    x2 = x.reshape(-1, K).contiguous()  # [M, K]
    M = x2.shape[0]
    block_m, block_n, block_k, warps = w8a16_tiles(M, N * K)
    splits = split_k or choose_split_k(M, N, K, x.device)
    # one split writes the result directly; several write float32 partials [splits, M, N] summed below
    out = torch.empty((splits, M, N), dtype=x.dtype if splits == 1 else torch.float32, device=x.device)
    if M:
        _w8a16_kernel[(triton.cdiv(M, block_m), triton.cdiv(N, block_n), splits)](
            x2,
            w,
            w_scale,
            out,
            M,
            N,
            K,
            x2.stride(0),
            w.stride(0),
            out.stride(0),
            out.stride(1),
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_K=block_k,
            SPLIT_K=splits,
            F32_DOT=interpreted(_w8a16_kernel),
            num_warps=warps,
            num_stages=3,
        )
    result = out[0] if splits == 1 else out.sum(0).to(x.dtype)  # [M, N]
    return result.view(*x.shape[:-1], N)
