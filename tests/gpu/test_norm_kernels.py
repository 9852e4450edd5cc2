"""The norm family's kernels (RMSNorm with residual, scalar, rope or the router's scalings; the q/k/v step
with its KV-cache writes; a layer's FFN prologue and end) and GEGLU, against the reference ops they
replace (model/layers.py), rounding where the reference rounds."""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from gemma_runtime.kernels.rms_norm import fused_rms_norm  # noqa: E402
from gemma_runtime.model.cuda_backends import TritonGEGLU, TritonKVWrite, TritonRMSNorm  # noqa: E402
from gemma_runtime.model.kv_write import TorchKVWrite  # noqa: E402
from gemma_runtime.model.layers import TorchGEGLU, TorchRMSNorm, rope_cos_sin, rope_inv_freq  # noqa: E402
from tests.gpu.kernel_support import CUDA, DEVICE, DTYPES, assert_as_accurate  # noqa: E402


def f64(value):
    """Inputs for the float64 computation the bf16 results are measured against (rope tables too)."""
    if isinstance(value, torch.Tensor):
        return value.double()
    if isinstance(value, (tuple, list)):
        return type(value)(f64(v) for v in value)
    if isinstance(value, dict):
        return {k: f64(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "form", ["weight", "no weight", "residual", "residual and scale", "strided heads", "rope", "proportional rope"]
)
def test_fused_rms_norm_matches_the_reference(dtype, form):
    """Each form the decoder uses, against the reference norm and its add and scalar. H = 2816 (the
    26B-A4B's hidden size, not a power of two); the strided form is q inside a fused QKV projection."""
    g = torch.Generator().manual_seed(len(form))
    H, T = 2816, 5
    x = (torch.randn(T, H, generator=g) * 3).to(DEVICE, dtype)
    w = (torch.rand(H, generator=g) + 0.5).to(DEVICE, dtype)
    residual = torch.randn(T, H, generator=g).to(DEVICE, dtype)
    scale = torch.tensor([0.7]).to(DEVICE, dtype)
    args = {
        "weight": (x, w, {}),
        "no weight": (x, None, {}),
        "residual": (x, w, {"residual": residual}),
        "residual and scale": (x, w, {"residual": residual, "scale": scale}),
    }.get(form)
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
        torch.testing.assert_close(out, ref, rtol=2**-7, atol=2**-4)
        if CUDA:
            assert_as_accurate(out, ref, TorchRMSNorm()(f64(x_in), f64(weight), 1e-6, **f64(extra)))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("moe", [True, False], ids=["MoE layer", "dense layer"])
def test_ffn_prologue_in_one_launch_matches_the_reference(dtype, moe):
    """The start of a layer's FFN half (post-attention norm and residual, then the pre-FFN norm and, on
    MoE layers, the experts' input norm and the router's input) against TorchRMSNorm.ffn_prologue."""
    g = torch.Generator().manual_seed(7 + moe)
    T, H = 5, 2816
    h, residual = ((torch.randn(T, H, generator=g) * 3).to(DEVICE, dtype) for _ in range(2))
    w_post_attn, w_pre_ffn, w_experts, router_scale = (
        (torch.rand(H, generator=g) + 0.5).to(DEVICE, dtype) for _ in range(4)
    )
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
    experts = (
        torch.randn(T, slots, H, generator=g).to(DEVICE) if slots else torch.randn(T, H, generator=g).to(DEVICE, dtype)
    )
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
@pytest.mark.parametrize("d, k_eq_v", [(256, False), (512, True), (32, False)], ids=["sliding 256", "K=V 512", "tiny"])
def test_fused_qkv_norm_writes_the_cache_and_returns_q_like_the_reference(dtype, d, k_eq_v):
    """One launch for a layer's q/k/v norms, rope and K/V cache writes, against TorchKVWrite (three
    norms and two index_copy writes). Slots are scattered; every slot not written must keep its NaN."""
    g = torch.Generator().manual_seed(d)
    T, nq, nkv, slots_total = 5, 4, 2, 40
    qkv = (torch.randn(T, (nq + (1 if k_eq_v else 2) * nkv) * d, generator=g) * 3).to(DEVICE, dtype)
    q_w, k_w = ((torch.rand(d, generator=g) + 0.5).to(DEVICE, dtype) for _ in range(2))
    inv_freq = rope_inv_freq(d, 1e6, d // 8 if k_eq_v else d // 2)  # full layers: proportional rope
    rope = tuple(t.to(DEVICE) for t in rope_cos_sin(torch.tensor([0, 1, 7, 300, 5000]), inv_freq))
    slots = torch.tensor([17, 3, 38, 0, 22], device=DEVICE)
    caches = {
        name: [torch.full((slots_total, nkv, d), float("nan"), dtype=dtype, device=DEVICE) for _ in range(2)]
        for name in ("ref", "out")
    }
    ref_q = TorchKVWrite()(qkv, nq, nkv, d, k_eq_v, q_w, k_w, 1e-6, rope, caches["ref"], slots)
    out_q = TritonKVWrite()(qkv, nq, nkv, d, k_eq_v, q_w, k_w, 1e-6, rope, caches["out"], slots)
    assert out_q.shape == ref_q.shape == (T, nq, d) and out_q.dtype == dtype
    untouched = torch.ones(slots_total, dtype=torch.bool, device=DEVICE)
    untouched[slots] = False
    for out in caches["out"]:
        assert out[untouched].isnan().all() and not out[slots].isnan().any()
    # the same rounding allowance as the single norms above (sum of squares in another order)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2**-7, atol=2**-4)
    truth_cache = [torch.zeros(slots_total, nkv, d, dtype=torch.float64, device=DEVICE) for _ in range(2)]
    truth_q = TorchKVWrite()(f64(qkv), nq, nkv, d, k_eq_v, f64(q_w), f64(k_w), 1e-6, f64(rope), truth_cache, slots)
    for ref, out, truth in [
        (ref_q, out_q, truth_q),
        *((r[slots], o[slots], t[slots]) for r, o, t in zip(caches["ref"], caches["out"], truth_cache)),
    ]:
        torch.testing.assert_close(out, ref, **tol)
        if CUDA and dtype == torch.bfloat16:
            assert_as_accurate(out, ref, truth)


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
        assert_as_accurate(out, ref, TorchGEGLU()(f64(gate_up)))
