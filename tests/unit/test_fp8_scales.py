"""FP8 scales are per channel (weights) and per token (activations), not per tensor.

Rows of a trained weight, and tokens of a batch, differ in magnitude by orders. One scale per row keeps
every row's error at e4m3's relative rounding step (3 mantissa bits: at most 2^-4 of an element, a few
percent of a row). One tensor-wide scale keeps that precision only for rows within e4m3's normal range
of the largest (2^-6 to 448, about 4.5 orders) and pushes rows further below into the subnormals or to
zero. The weights and tokens here span six orders of magnitude, so a per-tensor scale fails every bound
below by a wide margin (the smallest rows come back with errors near 100%), while per-row scales pass.
The end-to-end quality figures are in tests/unit/test_fp8.py.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine_builder.convert import build_engine
from engine_builder.tiny.random_checkpoint import make_tiny_checkpoint
from engine_builder.weights import quantize_fp8
from gemma_runtime.engine_format.fp8 import FP8, dequantize
from gemma_runtime.engine_format.spec import EngineSpec
from gemma_runtime.model.linear import emulated_fp8_linear as fp8_linear

ROW_ERROR = 0.04  # relative RMS error of one weight row: e4m3's rounding gives ~2-3% on Gaussian rows
# An output row carries its token's rounding and the weight's: measured worst 4.1% of 16 tokens.
TOKEN_ERROR = 0.08


def row_ramp(n: int) -> torch.Tensor:
    return torch.logspace(-6, 0, n)  # [n]: row magnitudes from 1e-6 to 1


def relative_row_error(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    return (got - want).norm(dim=-1) / want.norm(dim=-1)  # [rows]


def test_weight_rows_of_every_magnitude_keep_their_precision():
    torch.manual_seed(0)
    w = torch.randn(64, 96) * row_ramp(64)[:, None]  # [N, K]
    q, scale = quantize_fp8(w)
    assert q.dtype == FP8 and scale.shape == (64,)
    err = relative_row_error(dequantize(q, scale, torch.float32), w)
    assert err.max() < ROW_ERROR, f"worst row {err.argmax()}: {err.max():.3f}"


def test_stacked_expert_weights_get_a_scale_per_expert_row():
    torch.manual_seed(1)
    w = torch.randn(4, 32, 48) * row_ramp(32)[None, :, None] * torch.tensor([1e-2, 1.0, 1e-1, 3.0])[:, None, None]
    q, scale = quantize_fp8(w)  # [E, N, K], [E, N]
    assert scale.shape == (4, 32)
    assert relative_row_error(dequantize(q, scale, torch.float32), w).max() < ROW_ERROR


def test_activation_tokens_of_every_magnitude_keep_their_precision():
    """fp8_linear quantizes activations per token: a quiet token next to a loud one loses nothing."""
    torch.manual_seed(2)
    w = torch.randn(48, 64)
    q, scale = quantize_fp8(w)
    exact_w = dequantize(q, scale, torch.float32)
    x = torch.randn(16, 64) * row_ramp(16)[:, None]  # [M, K] tokens from 1e-6 to 1
    err = relative_row_error(fp8_linear(x, q, scale), x @ exact_w.T)
    assert err.max() < TOKEN_ERROR, f"worst token {err.argmax()}: {err.max():.3f}"


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """A tiny dense checkpoint whose linear weights' rows span six orders of magnitude, built in
    float32 and in fp8 by the engine builder."""
    root = tmp_path_factory.mktemp("fp8-scales")
    ckpt = make_tiny_checkpoint(root / "ckpt", kind="dense", seed=2, sliding_window=8, with_vision=False)
    (file,) = ckpt.glob("*.safetensors")
    tensors = load_file(str(file))
    for name, t in tensors.items():
        if name.endswith("proj.weight") and ".layers." in name and t.dim() == 2:
            tensors[name] = (
                t
                * row_ramp(t.shape[0])[torch.randperm(t.shape[0], generator=torch.Generator().manual_seed(3))][:, None]
            )
    save_file(tensors, str(file), metadata={"format": "pt"})
    return {d: build_engine(str(ckpt), root / "engines", dtype=d, progress=False) for d in ("fp32", "fp8")}


def test_built_fp8_engine_keeps_every_row_of_every_linear(engines):
    spec = EngineSpec.load(engines["fp8"])
    assert spec.quantization.granularity == "per_channel" and spec.quantization.modules
    with (
        safe_open(str(engines["fp8"] / "model.safetensors"), framework="pt") as f8,
        safe_open(str(engines["fp32"] / "model.safetensors"), framework="pt") as f32,
    ):
        for name in spec.quantization.modules:
            w = f8.get_tensor(name)
            got = dequantize(w, f8.get_tensor(name + "_scale"), torch.float32)
            err = relative_row_error(got, f32.get_tensor(name).float())
            assert err.max() < ROW_ERROR, f"{name}: worst row {err.argmax()} off by {err.max():.3f}"
