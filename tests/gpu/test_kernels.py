"""The Triton kernels against the reference implementations (model/attention.py, model/moe.py, the
dequantizing linear). On CUDA they run compiled; without CUDA the same kernels run on CPU under Triton's
interpreter (TRITON_INTERPRET=1) with small shapes. Skipped only when triton is not importable.

Every check draws fresh random inputs, fills unused cache slots with NaN (a kernel that reads a slot
outside its sequence's pages or window poisons its output) and compares by relative norm error.
"""

from __future__ import annotations

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    # must be set before the kernels are decorated (at their import): triton picks the interpreter then
    os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton")

from gemma_runtime.engine_config import LayerSpec  # noqa: E402
from gemma_runtime.forward_batch import ForwardBatch  # noqa: E402
from gemma_runtime.kernels.fp8_gemm import w8a16_linear  # noqa: E402
from gemma_runtime.kernels.moe_gemm import align_by_expert  # noqa: E402
from gemma_runtime.kernels.moe_routing import route as fused_route  # noqa: E402
from gemma_runtime.kernels.moe_routing import topk_softmax, topk_softmax_row_tiles  # noqa: E402
from gemma_runtime.kernels.paged_decode import paged_decode_attention  # noqa: E402
from gemma_runtime.model.attention import TorchPagedAttention  # noqa: E402
from gemma_runtime.kernels.rms_norm import fused_rms_norm  # noqa: E402
from gemma_runtime.model.cuda_backends import TritonFusedExperts, TritonGEGLU, TritonPagedAttention, TritonRMSNorm  # noqa: E402
from gemma_runtime.model.layers import TorchGEGLU, TorchRMSNorm, rope_cos_sin, rope_inv_freq  # noqa: E402
from gemma_runtime.model.linear import W8A16_MAX_ROWS, dequantize, fp8_linear, linear, quantize_per_row  # noqa: E402
from gemma_runtime.model.moe import TorchGroupedExperts, route  # noqa: E402

DEVICE = torch.device("cuda" if CUDA else "cpu")
# bf16 operands land between 1e-3 and 1e-2; float32 through tl.dot is tf32 on the GPU (~3e-4), exact-ish on CPU
TOL = {torch.float32: 2e-3, torch.bfloat16: 2e-2}
DTYPES = [torch.bfloat16] if CUDA else [torch.float32, torch.bfloat16]
# the model's head dims (256 sliding, 512 full) plus a tiny one; the interpreter runs these on small batches
HEAD_DIMS = [32, 256, 512]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert not out.isnan().any(), "output has NaN: a kernel read an unused slot or left rows unwritten"
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


# ------------------------------------------------------------------ paged attention


def make_step(new_tokens: list[int], past: list[int], hq: int, hkv: int, d: int, window: int | None,
              block_size: int, dtype: torch.dtype, seed: int):
    """One step of a batch: sequence b has past[b] tokens cached and brings new_tokens[b] queries.

    Pages are handed out shuffled (no sequence owns consecutive pages); on sliding layers the pages wholly
    before every query's window are reclaimed (-1), as the block manager does. Unused slots hold NaN."""
    g = torch.Generator().manual_seed(seed)
    ctx = [p + n for p, n in zip(past, new_tokens)]
    pages_per_seq = [-(-c // block_size) for c in ctx]
    perm = torch.randperm(sum(pages_per_seq) + 3, generator=g).tolist()  # +3 pages nobody owns
    tables, slots, positions, query_start = [], [], [], [0]
    for b, (p, n) in enumerate(zip(past, new_tokens)):
        own = perm[sum(pages_per_seq[:b]) : sum(pages_per_seq[: b + 1])]
        if window is not None:
            first_needed = max(0, p - window + 1)  # the first query (position p) looks back window - 1 keys
            own = [page if (i + 1) * block_size > first_needed else -1 for i, page in enumerate(own)]
        tables.append(own)
        positions += list(range(p, p + n))
        query_start.append(query_start[-1] + n)
    width = max(len(t) for t in tables)
    table = torch.tensor([t + [-1] * (width - len(t)) for t in tables])  # [B, width]
    for b, (p, n) in enumerate(zip(past, new_tokens)):
        slots += [tables[b][q // block_size] * block_size + q % block_size for q in range(p, p + n)]
    num_slots = (len(perm)) * block_size
    k_cache = torch.full((num_slots, hkv, d), float("nan"), dtype=dtype)
    v_cache = torch.full((num_slots, hkv, d), float("nan"), dtype=dtype)
    for b, c in enumerate(ctx):  # the past tokens' K/V that are still in the cache
        for pos in range(past[b]):
            page = tables[b][pos // block_size]
            if page >= 0:
                k_cache[page * block_size + pos % block_size] = torch.randn(hkv, d, generator=g).to(dtype)
                v_cache[page * block_size + pos % block_size] = torch.randn(hkv, d, generator=g).to(dtype)
    t = sum(new_tokens)
    # queries scaled so the softmax is neither flat nor one-hot (the model's scale is 1.0 after q/k norms)
    q = (torch.randn(t, hq, d, generator=g) * d**-0.25).to(dtype)
    k = (torch.randn(t, hkv, d, generator=g) * d**-0.25).to(dtype)
    v = torch.randn(t, hkv, d, generator=g).to(dtype)
    as_dev = lambda x: torch.tensor(x, dtype=torch.int64, device=DEVICE)  # noqa: E731
    batch = ForwardBatch(
        input_ids=torch.zeros(t, dtype=torch.int64, device=DEVICE), positions=as_dev(positions),
        query_start=as_dev(query_start), context_lens=as_dev(ctx),
        slot_mapping={"sliding": as_dev(slots), "full": as_dev(slots)},
        block_tables={"sliding": table.to(DEVICE), "full": table.to(DEVICE)}, block_size=block_size,
        logits_indices=as_dev([s - 1 for s in query_start[1:]]),
    )  # fmt: skip
    dev = lambda x: x.to(DEVICE)  # noqa: E731
    return dev(q), dev(k), dev(v), (dev(k_cache), dev(v_cache)), batch


def layer(kind: str, d: int, hkv: int) -> LayerSpec:
    return LayerSpec(type=kind, head_dim=d, num_kv_heads=hkv, k_eq_v=False, rope_theta=1e4, rope_angles=d // 2)


def compare_backends(step, kind: str, window: int) -> float:
    q, k, v, (kc, vc), batch = step
    spec = layer(kind, q.shape[-1], k.shape[1])
    slots = batch.slot_mapping[kind]
    kc.index_copy_(0, slots, k)  # the step's own K/V are in the cache before attention runs
    vc.index_copy_(0, slots, v)
    ref = TorchPagedAttention()(q, (kc, vc), batch, spec, window)
    out = TritonPagedAttention()(q, (kc, vc), batch, spec, window)
    return rel_err(out, ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("kind", ["sliding", "full"])
def test_decode_attention(dtype, d, kind):
    # 3 sequences, one query each; GQA group 4; lengths straddle pages and the window (window 24, page 8)
    hq, hkv, window = 8, 2, 24
    step = make_step([1, 1, 1], past=[0, 30, 57], hq=hq, hkv=hkv, d=d, window=window if kind == "sliding" else None,
                     block_size=8, dtype=dtype, seed=d)
    assert step[4].is_decode_only
    assert compare_backends(step, kind, window) < TOL[dtype]


@pytest.mark.parametrize("splits", [1, 2, 8])
def test_decode_split_count_does_not_change_the_result(splits):
    q, k, v, (kc, vc), batch = make_step([1, 1], past=[5, 70], hq=4, hkv=1, d=64, window=None, block_size=16,
                                         dtype=torch.float32, seed=splits)  # fmt: skip
    kc.index_copy_(0, batch.slot_mapping["full"], k)
    vc.index_copy_(0, batch.slot_mapping["full"], v)
    one = paged_decode_attention(q, kc, vc, batch.block_tables["full"], batch.context_lens, 16, None, num_splits=1)
    many = paged_decode_attention(q, kc, vc, batch.block_tables["full"], batch.context_lens, 16, None, num_splits=splits)
    assert rel_err(many, one) < 1e-3


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("kind", ["sliding", "full"])
def test_prefill_and_extend_attention(dtype, d, kind):
    # a fresh prompt, a chunk extending a cached prefix past the window, and a decode row mixed in
    window = 16
    step = make_step([37, 20, 1], past=[0, 45, 9], hq=4, hkv=2, d=d, window=window if kind == "sliding" else None,
                     block_size=8, dtype=dtype, seed=d + 1)
    assert not step[4].is_decode_only
    assert compare_backends(step, kind, window) < TOL[dtype]


def span_bounds(batch: ForwardBatch) -> torch.Tensor:
    """[T, 2]: each query row's image span [start, end) from batch.bidirectional_spans, (0, 0) outside."""
    starts, positions = batch.query_start.tolist(), batch.positions.tolist()
    rows = []
    for b, spans in enumerate(batch.bidirectional_spans):
        for p in positions[starts[b] : starts[b + 1]]:
            rows.append(next(((a, e) for a, e in spans if a <= p < e), (0, 0)))
    return torch.tensor(rows, dtype=torch.int64, device=DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [32, 256])
def test_image_spans_are_bidirectional_on_sliding_layers(dtype, d):
    """The kernel's span rule against the reference: a fresh prompt with one image; a chunk without
    images; a chunk whose image (20 tokens) is longer than the window (16); two images in one prompt.
    Full layers ignore the spans (causal)."""
    window = 16
    q, k, v, cache, batch = make_step([20, 6, 30, 25], past=[0, 3, 10, 0], hq=4, hkv=2, d=d, window=window,
                                      block_size=8, dtype=dtype, seed=7)  # fmt: skip
    batch.bidirectional_spans = [[(4, 12)], [], [(14, 34)], [(2, 7), (9, 20)]]
    batch.span_bounds = span_bounds(batch)
    for kind in ("sliding", "full"):
        assert compare_backends((q, k, v, cache, batch), kind, window) < TOL[dtype]
    # the spans matter: without them the kernel's sliding output differs from the reference
    no_spans = ForwardBatch(**{**batch.__dict__, "span_bounds": None})
    assert compare_backends((q, k, v, cache, no_spans), "sliding", window) > 5 * TOL[dtype]


# ------------------------------------------------------------------ MoE


@pytest.mark.parametrize("tokens", [1, 7, 80])  # decode tiles (16 rows) and prefill tiles (64 rows)
def test_routing_kernel_matches_reference(tokens):
    g = torch.Generator().manual_seed(tokens)
    H, E, k = 64, 128, 8
    residual = torch.randn(tokens, H, generator=g).to(DEVICE)
    proj = (torch.randn(E, H, generator=g) / 4).to(DEVICE)
    scale = (1 + 0.3 * torch.randn(H, generator=g)).to(DEVICE)
    w_ref, ids_ref = route(residual, proj, scale, k, 1e-6)
    w, ids = fused_route(residual, proj, scale, k, 1e-6)
    assert torch.equal(ids, ids_ref)
    assert torch.allclose(w, w_ref, atol=1e-5) and torch.allclose(w.sum(-1), torch.ones(tokens, device=DEVICE), atol=1e-5)


@pytest.mark.parametrize("tokens, k, experts, block_m", [(4, 2, 5, 2), (1, 8, 128, 16), (37, 8, 128, 16), (300, 8, 128, 64)])
def test_align_by_expert_groups_rows_into_single_expert_tiles(tokens, k, experts, block_m):
    g = torch.Generator().manual_seed(tokens)
    ids = torch.stack([torch.randperm(experts, generator=g)[:k] for _ in range(tokens)]).to(DEVICE)  # [T, k] distinct per token
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


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16 experts", "fp8 experts"])
@pytest.mark.parametrize("tokens", [1, 2, 3, 70], ids=lambda t: f"T={t}")
def test_routed_experts_from_the_router_input_match_the_reference(tokens, fp8):
    """The backends' one entry point from the router's input (router GEMM, routing, experts) at the
    26B-A4B's E=128, k=8. T*k <= ROW_TILE_MAX_ROWS (T = 1, 2) takes the router kernel's one-tile-per-row
    layout, larger T align_by_expert's; both against the reference route + experts, the per-slot rows
    summed as the epilogue sums them."""
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


# ------------------------------------------------------------------ RMSNorm


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("form", ["weight", "no weight", "residual", "residual and scale", "strided heads", "rope",
                                  "proportional rope"])
def test_fused_rms_norm_matches_the_reference(dtype, form):
    """Each form the decoder uses, against the reference norm and its add and scalar. H = 2816 (the
    26B-A4B's hidden size, not a power of two); the strided form is q inside a fused QKV projection."""
    g = torch.Generator().manual_seed(len(form))
    H, T = 2816, 5
    x = (torch.randn(T, H, generator=g) * 3).to(DEVICE, dtype)
    w = (torch.rand(H, generator=g) + 0.5).to(DEVICE, dtype)
    residual = torch.randn(T, H, generator=g).to(DEVICE, dtype)
    scale = torch.tensor([0.7]).to(DEVICE, dtype)
    args = {"weight": (x, w, {}), "no weight": (x, None, {}), "residual": (x, w, {"residual": residual}),
            "residual and scale": (x, w, {"residual": residual, "scale": scale})}.get(form)
    if form in ("strided heads", "rope", "proportional rope"):
        qkv = (torch.randn(T, (4 + 2 * 2) * 256, generator=g) * 3).to(DEVICE, dtype)  # 4 q heads, 2 kv heads, d=256
        q = qkv[:, : 4 * 256].view(T, 4, 256)  # [T, 4, 256] with a token stride of 8 * 256
        extra = {}
        if form != "strided heads":  # full layers rotate only the first 32 of 128 frequencies (proportional RoPE)
            inv_freq = rope_inv_freq(256, 1e6, 32 if form == "proportional rope" else 128)
            extra["rope"] = tuple(t.to(DEVICE) for t in rope_cos_sin(torch.tensor([0, 1, 7, 300, 5000]), inv_freq))
        args = (q, (torch.rand(256, generator=g) + 0.5).to(DEVICE, dtype), extra)
    x_in, weight, extra = args
    ref = TorchRMSNorm()(x_in, weight, 1e-6, **extra)
    out = fused_rms_norm(x_in, weight, 1e-6, **extra)
    assert out.shape == ref.shape and out.dtype == ref.dtype and out.is_contiguous()
    # float32 inside, rounded where the reference rounds. The sum of squares is added in another order,
    # so a value next to a rounding boundary may land one step away: in bf16 that is one unit in the last
    # place of the largest operand (|values| < 8 here: 1/16). Compiled, that happens to few elements;
    # Triton's interpreter truncates float32 to bf16 instead of rounding to nearest, so about half differ
    # by that step there.
    if dtype == torch.float32:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(out, ref, rtol=2 ** -7, atol=2 ** -4)
        if CUDA:
            assert (out == ref).float().mean() > 0.97


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("moe", [True, False], ids=["MoE layer", "dense layer"])
def test_ffn_prologue_in_one_launch_matches_the_reference(dtype, moe):
    """The start of a layer's FFN half (post-attention norm and residual, then the pre-FFN norm and, on
    MoE layers, the experts' input norm and the router's input) against TorchRMSNorm.ffn_prologue."""
    g = torch.Generator().manual_seed(7 + moe)
    T, H = 5, 2816
    h, residual = ((torch.randn(T, H, generator=g) * 3).to(DEVICE, dtype) for _ in range(2))
    w_post_attn, w_pre_ffn, w_experts, router_scale = ((torch.rand(H, generator=g) + 0.5).to(DEVICE, dtype) for _ in range(4))
    args = (h, residual, w_post_attn, w_pre_ffn, 1e-6, *((w_experts, router_scale) if moe else ()))
    ref = TorchRMSNorm().ffn_prologue(*args)
    out = TritonRMSNorm().ffn_prologue(*args)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2**-6, atol=2**-4)
    for name in ("residual", "mlp_in", "experts_in", "router_in"):
        r, o = getattr(ref, name), getattr(out, name)
        if not moe and name in ("experts_in", "router_in"):
            assert r is None and o is None
            continue
        assert o.shape == r.shape == (T, H) and o.dtype == dtype, name
        torch.testing.assert_close(o, r, **tol, msg=name)
        if CUDA and dtype == torch.bfloat16:
            assert (o == r).float().mean() > 0.95, name


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("slots", [0, 8, None], ids=["MoE, summed experts", "MoE, per-slot experts", "dense"])
def test_layer_end_in_one_launch_matches_the_reference(dtype, slots):
    """The end of a layer against TorchRMSNorm: for MoE layers (moe_epilogue) the sum over the k expert
    rows (given summed already or as float32 slots), three post-norms, residual and layer scalar; for
    dense layers (layer_end) the post-FFN norm, residual and scalar. Both also return the output's norm
    with the next layer's input weight."""
    g = torch.Generator().manual_seed((slots or 1) + 3)
    T, H = 5, 2816
    dense, residual = ((torch.randn(T, H, generator=g) * 3).to(DEVICE, dtype) for _ in range(2))
    experts = torch.randn(T, slots, H, generator=g).to(DEVICE) if slots else torch.randn(T, H, generator=g).to(DEVICE, dtype)
    w_dense, w_experts, w_post, w_next = ((torch.rand(H, generator=g) + 0.5).to(DEVICE, dtype) for _ in range(4))
    scalar = torch.tensor([0.7]).to(DEVICE, dtype)
    if slots is None:
        op, args = "layer_end", (dense, residual, w_post, scalar, w_next, 1e-6)
    else:
        op, args = "moe_epilogue", (dense, experts, residual, w_dense, w_experts, w_post, scalar, w_next, 1e-6)
    refs = getattr(TorchRMSNorm(), op)(*args)
    outs = getattr(TritonRMSNorm(), op)(*args)
    # up to six roundings in a chain: a value at a rounding boundary may move a step and carry into the next
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2**-6, atol=2**-4)
    for out, ref in zip(outs, refs, strict=True):
        assert out.shape == ref.shape == (T, H) and out.dtype == dtype
        torch.testing.assert_close(out, ref, **tol)
        if CUDA and dtype == torch.bfloat16:
            assert (out == ref).float().mean() > 0.95


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_router_norm_with_its_scalings_in_one_launch(dtype):
    """The router's input, rms_norm(x) * router_scale * H^-0.5, as the reference computes and rounds it."""
    g = torch.Generator().manual_seed(11)
    H = 2816
    x = (torch.randn(6, H, generator=g) * 3).to(DEVICE, dtype)
    v = (torch.rand(H, generator=g) + 0.5).to(DEVICE, dtype)
    ref = TorchRMSNorm()(x, None, 1e-6) * v * H**-0.5
    out = fused_rms_norm(x, None, 1e-6, post=(v, H**-0.5))
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2**-7, atol=2**-8)
    torch.testing.assert_close(out, ref, **tol)
    if CUDA and dtype == torch.bfloat16:
        assert (out == ref).float().mean() > 0.97


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d, k_eq_v", [(256, False), (512, True), (32, False)], ids=["sliding 256", "K=V 512", "tiny"])
def test_fused_qkv_norm_writes_the_cache_and_returns_q_like_the_reference(dtype, d, k_eq_v):
    """One launch for a layer's q/k/v norms, rope and K/V cache writes, against TorchRMSNorm.qkv (three
    norms and two index_copy writes). Slots are scattered; every slot not written must keep its NaN."""
    g = torch.Generator().manual_seed(d)
    T, nq, nkv, slots_total = 5, 4, 2, 40
    qkv = (torch.randn(T, (nq + (1 if k_eq_v else 2) * nkv) * d, generator=g) * 3).to(DEVICE, dtype)
    q_w, k_w = ((torch.rand(d, generator=g) + 0.5).to(DEVICE, dtype) for _ in range(2))
    inv_freq = rope_inv_freq(d, 1e6, d // 8 if k_eq_v else d // 2)  # full layers: proportional rope
    rope = tuple(t.to(DEVICE) for t in rope_cos_sin(torch.tensor([0, 1, 7, 300, 5000]), inv_freq))
    slots = torch.tensor([17, 3, 38, 0, 22], device=DEVICE)
    caches = {name: [torch.full((slots_total, nkv, d), float("nan"), dtype=dtype, device=DEVICE) for _ in range(2)]
              for name in ("ref", "out")}  # fmt: skip
    ref_q = TorchRMSNorm().qkv(qkv, nq, nkv, d, k_eq_v, q_w, k_w, 1e-6, rope, caches["ref"], slots)
    out_q = TritonRMSNorm().qkv(qkv, nq, nkv, d, k_eq_v, q_w, k_w, 1e-6, rope, caches["out"], slots)
    assert out_q.shape == ref_q.shape == (T, nq, d) and out_q.dtype == dtype
    untouched = torch.ones(slots_total, dtype=torch.bool, device=DEVICE)
    untouched[slots] = False
    for ref, out in zip(caches["ref"], caches["out"]):
        assert out[untouched].isnan().all() and not out[slots].isnan().any()
    # the same rounding allowance as the single norms above (sum of squares in another order)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2**-7, atol=2**-4)
    for ref, out in [(ref_q, out_q), *((r[slots], o[slots]) for r, o in zip(caches["ref"], caches["out"]))]:
        torch.testing.assert_close(out, ref, **tol)
        if CUDA and dtype == torch.bfloat16:
            assert (out == ref).float().mean() > 0.97


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("inter", [2112, 40], ids=["26B-A4B dense MLP", "tiny"])
def test_fused_geglu_matches_the_reference(dtype, inter):
    """gelu_tanh(gate) * up in one launch against layers.geglu (two torch kernels); gate values span
    the GELU's curved part and both tails."""
    g = torch.Generator().manual_seed(inter)
    gate_up = (torch.randn(7, 2 * inter, generator=g) * 3).to(DEVICE, dtype)
    ref = TorchGEGLU()(gate_up)
    out = TritonGEGLU()(gate_up)
    assert out.shape == ref.shape == (7, inter) and out.dtype == dtype
    # the GELU is computed as g * sigmoid(2u) rather than with tanh: float32 results a few ulps apart,
    # which in bf16 can move a value next to a rounding boundary by one step, in each of the two roundings
    # (the interpreter truncates to bf16 where the GPU rounds to nearest, so there many values differ)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2**-6, atol=2**-6)
    torch.testing.assert_close(out, ref, **tol)
    if CUDA and dtype == torch.bfloat16:
        assert (out == ref).float().mean() > 0.97


# ------------------------------------------------------------------ FP8 linear


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows", [1, 5, 33])
@pytest.mark.parametrize("split_k", [None, 1, 3])
def test_w8a16_linear_matches_the_dequantized_product(dtype, rows, split_k):
    """The decode-time FP8 linear: e4m3 weights widened in the kernel, activations as they are. N and K
    (200, 300) are not multiples of the tiles; split-K (forced, or chosen) sums float32 partials."""
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 300, generator=g).to(DEVICE, dtype)
    w_q, w_s = quantize_per_row(torch.randn(200, 300, generator=g) / 20)
    w_q, w_s = w_q.to(DEVICE), w_s.to(DEVICE)
    out = w8a16_linear(x, w_q, w_s, split_k=split_k)
    exact = x.float() @ dequantize(w_q, w_s, torch.float32).t()
    assert out.shape == (rows, 200) and out.dtype == dtype
    assert rel_err(out, exact) < TOL[dtype]  # no activation rounding: as close as the dtype allows


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="torch._scaled_mm needs CUDA")
def test_fp8_linear_takes_w8a16_for_few_rows_and_scaled_mm_for_many():
    g = torch.Generator().manual_seed(0)
    w_q, w_s = quantize_per_row(torch.randn(4096, 2816, generator=g) / 50)
    w_q, w_s = w_q.to(DEVICE), w_s.to(DEVICE)
    exact = lambda x: x.float() @ dequantize(w_q, w_s, torch.float32).t()  # noqa: E731
    few = torch.randn(W8A16_MAX_ROWS, 2816, generator=g).to(DEVICE, torch.bfloat16)
    assert rel_err(linear(few, {"w": w_q, "w_scale": w_s}, "w"), exact(few)) < TOL[torch.bfloat16]  # W8A16
    many = torch.randn(W8A16_MAX_ROWS + 37, 2816, generator=g).to(DEVICE, torch.bfloat16)
    out = linear(many, {"w": w_q, "w_scale": w_s}, "w")  # the torch._scaled_mm path
    emulated = fp8_linear(many.cpu(), w_q.cpu(), w_s.cpu())  # the CPU emulation of the same arithmetic
    assert rel_err(out.cpu(), emulated) < TOL[torch.bfloat16]
    assert rel_err(out, exact(many)) < 0.05  # per-token e4m3 activations: a few percent, never more


# ------------------------------------------------------------------ the whole model


@pytest.mark.parametrize("kind", ["moe", "dense"])
def test_engine_greedy_with_triton_backends_matches_reference(request, kind):
    """The tiny engine, MoE (the 26B-A4B's layers) and dense (the 31B's), decodes the same greedy tokens
    with the Triton backends as with the reference (float32 on the CPU interpreter; on CUDA in float32
    too, where tf32 dots leave the argmax alone)."""
    engine_dir = request.getfixturevalue({"moe": "random_tiny_engine_dir", "dense": "random_tiny_dense_engine_dir"}[kind])
    from gemma_runtime.api import GenerateRequest, SamplingParams
    from gemma_runtime.config import RuntimeConfig
    from gemma_runtime.llm_engine import LLMEngine

    # prompts longer and shorter than the window (8), decoded past it
    prompts = ["The quick brown fox jumps over the lazy dog near the river bank.", "Hi there"]
    requests = lambda: [GenerateRequest(f"r{i}", p, SamplingParams(max_tokens=12, ignore_eos=True))  # noqa: E731
                        for i, p in enumerate(prompts)]
    ref = LLMEngine(engine_dir, RuntimeConfig(block_size=4, max_model_len=128)).generate(requests())
    engine = LLMEngine(engine_dir, RuntimeConfig(device=DEVICE.type, dtype="float32", block_size=4, max_model_len=128))
    engine.runner.text.attention = TritonPagedAttention()  # on CUDA the registry already chose these
    engine.runner.text.experts = TritonFusedExperts()
    engine.runner.text.norm = TritonRMSNorm()
    engine.runner.text.geglu = TritonGEGLU()
    assert engine.generate(requests()) == ref
