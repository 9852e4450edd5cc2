"""MoE kernels: the router tail (softmax, top-k, renormalise, and the one-tile-per-row layout), the
alignment of routed rows into single-expert tiles, the expert GEMMs and their one-row form (bf16 and FP8 weights) against
the reference (model/moe.py)."""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from gemma_runtime.engine_format.fp8 import dequantize, quantize_per_row  # noqa: E402
from gemma_runtime.kernels import moe_gemm, moe_gemv  # noqa: E402
from gemma_runtime.kernels.moe_align import align_by_expert  # noqa: E402
from gemma_runtime.kernels.moe_routing import topk_softmax, topk_softmax_row_tiles  # noqa: E402
from gemma_runtime.model.cuda_backends import TritonFusedExperts  # noqa: E402
from gemma_runtime.model.moe import TorchGroupedExperts, route_hidden  # noqa: E402
from tests.gpu.kernel_support import DEVICE, DTYPES, TOL, rel_err  # noqa: E402


@pytest.mark.parametrize("tokens", [1, 7, 80])  # decode tiles (16 rows) and prefill tiles (64 rows)
def test_routing_kernel_matches_reference(tokens):
    """Softmax over all 128 experts, top-8, renormalise: the router kernel against model/moe.py's route_hidden."""
    g = torch.Generator().manual_seed(tokens)
    H, E, k = 64, 128, 8
    router_in = torch.randn(tokens, H, generator=g).to(DEVICE)
    proj = (torch.randn(E, H, generator=g) / 4).to(DEVICE)
    w_ref, ids_ref = route_hidden(router_in, proj, k)
    w, ids = topk_softmax(torch.nn.functional.linear(router_in, proj), k)
    assert torch.equal(ids, ids_ref)
    assert torch.allclose(w, w_ref, atol=1e-5) and torch.allclose(
        w.sum(-1), torch.ones(tokens, device=DEVICE), atol=1e-5
    )


@pytest.mark.parametrize(
    "tokens, k, experts, block_m", [(4, 2, 5, 2), (1, 8, 128, 16), (37, 8, 128, 16), (300, 8, 128, 64)]
)
def test_align_by_expert_groups_rows_into_single_expert_tiles(tokens, k, experts, block_m):
    g = torch.Generator().manual_seed(tokens)
    ids = torch.stack([torch.randperm(experts, generator=g)[:k] for _ in range(tokens)]).to(
        DEVICE
    )  # [T, k] distinct per token
    if tokens == 4:
        ids = torch.tensor([[3, 0], [3, 1], [0, 3], [2, 3]], device=DEVICE)
    rows, tile_expert = align_by_expert(ids, num_experts=experts, block_m=block_m)
    n = ids.numel()
    assert rows.numel() == tile_expert.numel() * block_m
    tiles = rows.view(-1, block_m)  # [tiles, block_m]
    seen = []
    for tile, expert in zip(tiles.tolist(), tile_expert.tolist()):
        real = [r for r in tile if r < n]
        if expert < 0:
            assert not real
        assert all(ids.flatten()[r].item() == expert for r in real)
        seen += real
    assert sorted(seen) == list(range(n))  # every routed row exactly once
    # each expert hit gets ceil(count / block_m) tiles, no more
    used = [e for e in tile_expert.tolist() if e >= 0]
    counts = torch.bincount(ids.flatten().cpu(), minlength=experts).tolist()
    assert sorted(used) == sorted(e for e, c in enumerate(counts) for _ in range(-(-c // block_m)))


def expert_case(tokens: int, dtype: torch.dtype, seed: int, E: int = 8, H: int = 64, Ie: int = 48, k: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, H, generator=g).to(dtype)
    gate_up = (torch.randn(E, 2 * Ie, H, generator=g) / H**0.5).to(dtype)
    down = (torch.randn(E, H, Ie, generator=g) / Ie**0.5).to(dtype)
    logits = torch.randn(tokens, E, generator=g)
    weights, ids = torch.topk(logits.softmax(-1), k)
    weights = weights / weights.sum(-1, keepdim=True)
    return [t.to(DEVICE) for t in (x, weights, ids, gate_up, down)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("tokens", [1, 5, 70])
def test_fused_experts_match_reference(dtype, tokens):
    # Ie = 48 is not a multiple of the 64-wide tiles, so the masked edges are exercised
    x, weights, ids, gate_up, down = expert_case(tokens, dtype, seed=tokens)
    ref = TorchGroupedExperts()(x, weights, ids, gate_up, down)
    out = TritonFusedExperts()(x, weights, ids, gate_up, down)
    assert out.dtype == x.dtype and rel_err(out, ref) < TOL[dtype]


@pytest.mark.parametrize("tokens", [3, 70])
def test_fused_experts_with_fp8_weights(tokens):
    dtype = torch.bfloat16
    x, weights, ids, gate_up, down = expert_case(tokens, dtype, seed=100 + tokens)
    gu_q, gu_s = quantize_per_row(gate_up)  # [E, 2Ie, H] e4m3, [E, 2Ie]
    dn_q, dn_s = quantize_per_row(down)
    ref = TorchGroupedExperts()(x, weights, ids, dequantize(gu_q, gu_s, dtype), dequantize(dn_q, dn_s, dtype))
    out = TritonFusedExperts()(x, weights, ids, gu_q, dn_q, gate_up_scale=gu_s, down_scale=dn_s)
    assert rel_err(out, ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fp8", [False, True], ids=["bf16 experts", "fp8 experts"])
@pytest.mark.parametrize("tokens", [1, 2, 5])
def test_one_row_expert_kernels_match_the_reference(dtype, fp8, tokens):
    """experts_gemv: a matrix-vector product per routed row, its expert read from ids. Ie = 50 and
    H = 72 are multiples of neither the 4-row blocks nor the K chunks; any T works (the runtime uses it
    for one or two tokens)."""
    g = torch.Generator().manual_seed(tokens + 10 * fp8)
    E, H, Ie, k = 8, 72, 50, 2
    x = torch.randn(tokens, H, generator=g).to(DEVICE, dtype)
    gate_up = (torch.randn(E, 2 * Ie, H, generator=g) / H**0.5).to(DEVICE, dtype)
    down = (torch.randn(E, H, Ie, generator=g) / Ie**0.5).to(DEVICE, dtype)
    weights, ids = torch.topk(torch.randn(tokens, E, generator=g).softmax(-1), k)
    weights, ids = (weights / weights.sum(-1, keepdim=True)).to(DEVICE), ids.to(DEVICE)
    scales = {}
    if fp8:
        (gate_up, gu_s), (down, dn_s) = quantize_per_row(gate_up), quantize_per_row(down)
        scales = dict(gate_up_scale=gu_s, down_scale=dn_s)
    dense = (lambda w, s: dequantize(w, s, dtype)) if fp8 else (lambda w, s: w)
    ref = TorchGroupedExperts()(
        x, weights, ids, dense(gate_up, scales.get("gate_up_scale")), dense(down, scales.get("down_scale"))
    )
    per_slot = moe_gemv.experts_gemv(x, weights, ids, gate_up, down, **scales)
    assert per_slot.shape == (tokens, k, H) and per_slot.dtype == torch.float32
    assert rel_err(per_slot.sum(1).to(dtype), ref) < TOL[dtype]


def test_the_one_row_expert_kernels_take_one_or_two_tokens_of_fp8_experts():
    """The measured policy (kernels/moe_gemv.py): e4m3 stacks at up to 16 routed rows; bf16 keeps the tiles."""
    stack = lambda dtype: torch.empty((128, 1408, 2816), dtype=dtype, device="meta")  # noqa: E731
    assert moe_gemv.takes_expert_gemv(8, stack(torch.float8_e4m3fn)) and moe_gemv.takes_expert_gemv(
        16, stack(torch.float8_e4m3fn)
    )
    assert not moe_gemv.takes_expert_gemv(24, stack(torch.float8_e4m3fn))
    assert not moe_gemv.takes_expert_gemv(8, stack(torch.bfloat16))


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16 experts", "fp8 experts"])
@pytest.mark.parametrize(
    "tokens, expert_gemv",
    [(1, True), (2, True), (1, False), (2, False), (3, False), (70, False)],
    ids=["T=1 one-row kernels", "T=2 one-row kernels", "T=1 row tiles", "T=2 row tiles", "T=3", "T=70"],
)
def test_routed_experts_from_the_router_input_match_the_reference(tokens, fp8, expert_gemv, monkeypatch):
    """The backends' one entry point from the router's input (router GEMM, routing, experts) at the
    26B-A4B's E=128, k=8, each dtype through both forms for one or two tokens: a matrix-vector product
    per routed row, or the router kernel's one-tile-per-row layout (T*k <= ROW_TILE_MAX_ROWS); larger T
    through align_by_expert's layout. All against the reference route + experts, the per-slot rows
    summed as the epilogue sums them."""
    monkeypatch.setattr(moe_gemm, "takes_expert_gemv", lambda rows, gate_up: expert_gemv and rows <= 16)
    dtype, E, H, Ie, k = torch.bfloat16, 128, 64, 48, 8
    g = torch.Generator().manual_seed(tokens + 10 * fp8)
    x, router_in = ((torch.randn(tokens, H, generator=g)).to(DEVICE, dtype) for _ in range(2))
    router_proj = (torch.randn(E, H, generator=g) / H**0.5 * 4).to(DEVICE, dtype)  # well separated routing logits
    gate_up = (torch.randn(E, 2 * Ie, H, generator=g) / H**0.5).to(DEVICE, dtype)
    down = (torch.randn(E, H, Ie, generator=g) / Ie**0.5).to(DEVICE, dtype)
    kwargs = dict(gate_up=gate_up, down=down)
    if fp8:
        (gu_q, gu_s), (dn_q, dn_s) = quantize_per_row(gate_up), quantize_per_row(down)
        kwargs = dict(gate_up=gu_q, down=dn_q, gate_up_scale=gu_s, down_scale=dn_s)
        gate_up, down = dequantize(gu_q, gu_s, dtype), dequantize(dn_q, dn_s, dtype)
    ref = TorchGroupedExperts().routed(x, router_in, router_proj, k, gate_up, down)
    per_slot = TritonFusedExperts().routed(x, router_in, router_proj, k, **kwargs)
    assert per_slot.shape == (tokens, k, H) and per_slot.dtype == torch.float32
    assert rel_err(per_slot.sum(1).to(dtype), ref) < TOL[dtype]


def test_router_kernel_lays_out_one_tile_per_routed_row():
    logits = torch.randn(2, 128, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    weights, ids, (rows, tile_expert) = topk_softmax_row_tiles(logits, 8, block_m=16)
    plain_weights, plain_ids = topk_softmax(logits, 8)  # the same routing without the layout
    assert torch.equal(ids, plain_ids) and torch.equal(weights, plain_weights)
    assert torch.equal(tile_expert, ids.flatten())
    expected = torch.full((16, 16), 16, dtype=torch.int64)  # 2 tokens x 8 slots, padding marked T*k = 16
    expected[:, 0] = torch.arange(16)
    assert torch.equal(rows.view(16, 16).cpu(), expected)
