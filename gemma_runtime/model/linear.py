"""Linear layers over plain or FP8 engine weights (engines/README.md, "quantization").

An FP8 engine stores `X.weight` as float8_e4m3fn [N, K] beside a float32 `X.weight_scale` [N] (one
scale per output row; engine_format/fp8.py). The backend comes from the registry like the others:
on CUDA (model/cuda_backends.py TritonLinear), one row of a small enough FP8 weight goes through the
matrix-vector kernel (kernels/gemv.py; `takes_gemv`), other decode batches through the W8A16 Triton
kernel (kernels/fp8_gemm.py: weights widened in registers, activations untouched, one launch), and many
rows (prefill) through torch._scaled_mm on the FP8 tensor cores with the activations quantized per token
on the fly. The reference here emulates the _scaled_mm arithmetic in floating point (activations rounded
to e4m3 per token, weights dequantized), so the CPU path shows the quality of the coarser of the two.
This module keeps the measured policy (which kernel takes which product) that the CUDA backend reads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gemma_runtime.engine_format.fp8 import FP8, dequantize, quantize_per_row, scale_name
from gemma_runtime.model.registry import register

# Up to this many rows a product is bound by reading the weights, and W8A16 skips quantizing the
# activations; above it the FP8 tensor cores' compute wins. A starting point for tuning on the GPU.
W8A16_MAX_ROWS = 64
# Where the matrix-vector kernel (kernels/gemv.py) replaces W8A16, as measured on an H100
# (docs/benchmarks.md, 2026-11-25): one row of an e4m3 weight of up to 2^25 values. There it reads the
# weight with no padding to 16 rows and no split-K partial sums: the 26B-A4B's four linears took 1.34 ms
# of a batch-1 decode step, against 1.46 ms for W8A16 with its sums. The 31B's larger linears (44M
# values and up) ran 17-29% faster through W8A16; bf16 weights as fast or faster through cuBLAS; four
# rows 1.3-3x faster through either. bench/tune_kernels.py's `gemv-switch` re-measures all of these.
GEMV_MAX_ROWS = 1
GEMV_MAX_WEIGHT = 1 << 25
GEMV_WEIGHT_DTYPES = (FP8,)


def takes_gemv(rows: int, w: torch.Tensor) -> bool:
    """Whether a product of `rows` rows with weight w runs through the matrix-vector kernel (on CUDA)."""
    return rows <= GEMV_MAX_ROWS and w.dtype in GEMV_WEIGHT_DTYPES and w.numel() <= GEMV_MAX_WEIGHT


def emulated_fp8_linear(x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ w[N, K]^T with w e4m3 and per-row w_scale [N], as torch._scaled_mm computes it with
    dynamic per-token activation scales, in floating point."""
    x2 = x.reshape(-1, x.shape[-1])  # [M, K]
    xq, x_scale = quantize_per_row(x2)  # [M, K] e4m3, [M]
    out = F.linear(dequantize(xq, x_scale, torch.float32), dequantize(w, w_scale, torch.float32)).to(x.dtype)
    return out.view(*x.shape[:-1], w.shape[0])  # [..., N]


@register("linear", "cpu")
class TorchLinear:
    """x @ weights[name]^T, whether the engine stored that weight plainly or in FP8 with row scales."""

    def __call__(self, x: torch.Tensor, weights: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        w = weights[name]
        if w.dtype == FP8:
            return emulated_fp8_linear(x, w, weights[scale_name(name)])
        return F.linear(x, w)


def expert_weights(backend, weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The expert stacks of layer `prefix` as keyword arguments for a MoE backend: FP8 stacks go with
    their scales to a backend that takes them (`accepts_fp8`), and are dequantized for one that does not."""
    args = {}
    for arg, name in (("gate_up", prefix + "moe.gate_up_proj"), ("down", prefix + "moe.down_proj")):
        w = weights[name]
        if w.dtype != FP8:
            args[arg] = w
        elif getattr(backend, "accepts_fp8", False):
            args[arg], args[arg + "_scale"] = w, weights[scale_name(name)].float()
        else:
            args[arg] = dequantize(w, weights[scale_name(name)], weights[prefix + "moe.pre_norm.weight"].dtype)
    return args
