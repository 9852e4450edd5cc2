"""Pieces shared by the kernels."""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl


@functools.cache
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors to fill. Under the interpreter a small 8, so that tests see the
    split paths (split-K, split keys) taken."""
    if device.type != "cuda":
        return 8
    return torch.cuda.get_device_properties(device).multi_processor_count


def interpreted(kernel) -> bool:
    """True when triton runs `kernel` in its CPU interpreter (TRITON_INTERPRET=1 when it was decorated)."""
    return not isinstance(kernel, triton.runtime.JITFunction)


@triton.jit
def dot(a, b, F32_DOT: tl.constexpr):
    """tl.dot with a float32 accumulator. Triton 3.9's interpreter computes bf16 dots wrongly (numpy has
    no bf16), so under the interpreter only the operands are widened to float32 first; compiled kernels
    keep bf16 operands on the tensor cores."""
    if F32_DOT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    return tl.dot(a, b)


@triton.jit
def gelu_tanh(g):
    """GELU, tanh approximation, in float32: 0.5 g (1 + tanh(u)) == g * sigmoid(2u), u = sqrt(2/pi) (g + 0.044715 g^3)."""
    return g * tl.sigmoid(2.0 * 0.7978845608028654 * (g + 0.044715 * g * g * g))


@triton.jit
def online_softmax_step(s, m_i, l_i):
    """One key tile of FlashAttention's online softmax: s [M, N] float32 scores (-inf where masked) ->
    (new running max, new running sum, the tile's weights p [M, N], the factor alpha [M] that rescales
    the accumulator). The caller loads V only now (a tile loaded earlier lives longer in registers) and
    folds it in: acc * alpha + p v."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.exp(s - m_new[:, None])
    alpha = tl.exp(m_i - m_new)
    return m_new, l_i * alpha + tl.sum(p, 1), p, alpha


def padded_head_dim(head_dim: int) -> int:
    """The head width the attention kernels compute over: a power of two (tl.arange's rule), at least 16
    (tl.dot's). Gemma 4's 256 and 512 are their own padding; another checkpoint's 24 or 80 are masked."""
    return max(16, triton.next_power_of_2(head_dim))


@triton.jit
def rows_and_head_mask(rows_ok, d, HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr):
    """The [R, HEAD_PAD] load/store mask of R head rows: `rows_ok` per row, and only the real HEAD_DIM
    columns where the head is padded. Unpadded (a compile-time branch) the mask stays per row, as the
    kernels had it, so the loads keep their full vector width."""
    if HEAD_PAD == HEAD_DIM:
        mask = rows_ok[:, None]
    else:
        mask = rows_ok[:, None] & (d[None, :] < HEAD_DIM)
    return mask
