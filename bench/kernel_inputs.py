"""The launches bench/tune_kernels.py times: each `*_run` builds a kernel's inputs at a shape once and
returns a function that launches it (the runtime's own entry point: the tile functions it swaps are
read inside). Weight-bound launches take identical weight copies in turn, so that what one run reads
is not in L2 for the next, as in a decode step where every layer reads new weights."""

from __future__ import annotations

import itertools

import torch

from gemma_runtime.engine_format.fp8 import quantize_per_row
from gemma_runtime.kernels import fp8_gemm, gemv, paged_decode, paged_prefill
from gemma_runtime.model import linear
from gemma_runtime.model.cuda_backends import TritonFusedExperts, fp8_linear
from gemma_runtime.model.registry import create

BLOCK_SIZE = 16  # the runtime's KV page size (RuntimeConfig.block_size)


def paged_kv(batch: int, ctx: int, kv_heads: int, head_dim: int, device: torch.device):
    """Caches holding `batch` sequences of `ctx` keys each on consecutive pages, and their block tables."""
    pages = -(-ctx // BLOCK_SIZE)
    slots = batch * pages * BLOCK_SIZE
    k = torch.randn(slots, kv_heads, head_dim, device=device, dtype=torch.bfloat16)  # [slots, Hkv, D]
    v = torch.randn_like(k)
    tables = torch.arange(batch * pages, device=device, dtype=torch.int64).view(batch, pages)  # [B, pages]
    return k, v, tables


def decode_run(batch: int, ctx: int, heads: int, kv_heads: int, head_dim: int, window: int | None):
    def make(device: torch.device):
        q = torch.randn(batch, heads, head_dim, device=device, dtype=torch.bfloat16)  # [B, Hq, D]
        k, v, tables = paged_kv(batch, ctx, kv_heads, head_dim, device)
        lens = torch.full((batch,), ctx, device=device, dtype=torch.int64)
        return lambda: paged_decode.paged_decode_attention(q, k, v, tables, lens, BLOCK_SIZE, window)

    return make


def prefill_run(tokens: int, heads: int, kv_heads: int, head_dim: int, window: int | None):
    def make(device: torch.device):
        q = torch.randn(tokens, heads, head_dim, device=device, dtype=torch.bfloat16)  # [T, Hq, D]
        k, v, tables = paged_kv(1, tokens, kv_heads, head_dim, device)
        starts = torch.tensor([0, tokens], device=device, dtype=torch.int64)
        positions = torch.arange(tokens, device=device, dtype=torch.int64)
        return lambda: paged_prefill.paged_prefill_attention(
            q, k, v, tables, starts, positions, tokens, BLOCK_SIZE, window
        )

    return make


def fp8_rows(rows: int, cols: int, device: torch.device, lead: tuple[int, ...] = ()):
    """Random weights [*lead, rows, cols] quantized per row like an FP8 engine: (e4m3, float32 scales)."""
    w = torch.randn(*lead, rows, cols, device=device, dtype=torch.bfloat16) * cols**-0.5
    q, scale = quantize_per_row(w)  # [*lead, rows, cols], [*lead, rows]
    return q, scale


def copies(read_bytes: int, device: torch.device) -> int:
    """How many identical copies of a weight the timed runs take in turn, so that what one run reads is
    not still in L2 for the next (METHOD.md: rotate inputs): enough for four times the L2 between two
    reads of one copy. The outputs stay equal, so candidates still compare against the first run."""
    if device.type != "cuda":
        return 1
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20)
    return max(1, min(64, -(-4 * l2 // max(read_bytes, 1))))


def in_turn(sets: list):
    """A function returning the next of `sets` at each call, round and round."""
    cycle = itertools.cycle(sets)
    return lambda: next(cycle)


def moe_run(tokens: int, hidden: int, experts: int, top_k: int, inter: int, fp8: bool):
    """The experts as the decoder runs them: router GEMM, routing (with its one-tile-per-row layout for
    batches of one or two), expert GEMMs."""

    def make(device: torch.device):
        x, router_in = (torch.randn(tokens, hidden, device=device, dtype=torch.bfloat16) for _ in range(2))  # [T, H]
        router_proj = torch.randn(experts, hidden, device=device, dtype=torch.bfloat16) * hidden**-0.5
        if fp8:
            gate_up, gate_up_scale = fp8_rows(2 * inter, hidden, device, (experts,))  # [E, 2Ie, H], [E, 2Ie]
            down, down_scale = fp8_rows(hidden, inter, device, (experts,))  # [E, H, Ie], [E, H]
        else:
            gate_up = torch.randn(experts, 2 * inter, hidden, device=device, dtype=torch.bfloat16) * hidden**-0.5
            down = torch.randn(experts, hidden, inter, device=device, dtype=torch.bfloat16) * inter**-0.5
            gate_up_scale = down_scale = None
        experts_backend = TritonFusedExperts()
        read = tokens * top_k * 3 * inter * hidden * gate_up.element_size()  # at most T*k experts' rows
        stacks = in_turn([(gate_up, down)] + [(gate_up.clone(), down.clone()) for _ in range(copies(read, device) - 1)])

        def run():
            gu, dn = stacks()
            return experts_backend.routed(x, router_in, router_proj, top_k, gu, dn, gate_up_scale, down_scale)

        return run

    return make


def w8a16_run(rows: int, n: int, k: int, path=None):
    """path None: the W8A16 kernel itself; else the CUDA backend's fp8_linear (whichever path the row limit
    picks; the reference emulation elsewhere)."""

    def make(device: torch.device):
        x = torch.randn(rows, k, device=device, dtype=torch.bfloat16)  # [M, K]
        w, scale = fp8_rows(n, k, device)  # [N, K], [N]
        weight = in_turn([w] + [w.clone() for _ in range(copies(w.numel(), device) - 1)])
        if path is None:
            return lambda: fp8_gemm.w8a16_linear(x, weight(), scale)
        fp8 = fp8_linear if device.type == "cuda" else linear.emulated_fp8_linear
        return lambda: fp8(x, weight(), scale)

    return make


def linear_run(rows: int, n: int, k: int, fp8: bool, kernel: bool = False):
    """The device's linear backend as the decoder calls it (kernel: the matrix-vector kernel itself), on a bf16 or an
    FP8 weight [N, K]."""

    def make(device: torch.device):
        x = torch.randn(rows, k, device=device, dtype=torch.bfloat16)  # [M, K]
        if fp8:
            w, scale = fp8_rows(n, k, device)  # [N, K], [N]
        else:
            w, scale = torch.randn(n, k, device=device, dtype=torch.bfloat16) * k**-0.5, None
        weight = in_turn([w] + [w.clone() for _ in range(copies(w.nbytes, device) - 1)])
        backend = create("linear", device)

        def run():
            w_now = weight()
            if kernel:
                return gemv.gemv_linear(x, w_now, scale)
            return backend(x, {"w": w_now, "w_scale": scale} if fp8 else {"w": w_now}, "w")

        return run

    return make
