"""The FP8 convention of an engine (engines/README.md, "quantization"): `X.weight` stored as
float8_e4m3fn [N, K] beside a float32 `X.weight_scale` [N], one scale per output row (expert stacks
likewise, per expert and row). The builder quantizes with it; the model's linears and MoE read it."""

from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448


def scale_name(name: str) -> str:
    """`X.weight` -> `X.weight_scale`; expert stacks `layers.i.moe.gate_up_proj` -> `..._scale`."""
    return name + "_scale"


def quantize_per_row(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] -> (e4m3 [..., K], float32 scale [...]) with each row's max magnitude mapped to 448."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1).clamp(min=1e-12) / FP8_MAX  # [...]
    q = (xf / scale.unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def dequantize(w: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (w.float() * scale.float().unsqueeze(-1)).to(dtype)
