"""Engine dtypes the builder accepts: a registry from the names users type to one canonical name."""

from __future__ import annotations

import math

import torch

from .errors import BuildError

# canonical name -> torch dtype; the canonical name is what engine.json and the engine folder carry
DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float32": torch.float32}
# quantized engines: canonical name -> (dtype of every tensor left unquantized, engine.json quantization method)
QUANTIZED: dict[str, tuple[str, str]] = {"fp8": ("bfloat16", "fp8_e4m3")}
ALIASES: dict[str, str] = {
    "bf16": "bfloat16", "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32", "fp8": "fp8", "fp8_e4m3": "fp8",
}  # fmt: skip


def canonical_dtype(name: str) -> str:
    key = name.strip().lower()
    if key not in ALIASES:
        raise BuildError(f"unknown dtype {name!r}: use one of {', '.join(sorted(ALIASES))}")
    return ALIASES[key]


def base_dtype(name: str) -> str:
    """The engine.json dtype: the dtype of the unquantized tensors (bfloat16 for fp8 engines)."""
    key = canonical_dtype(name)
    return QUANTIZED[key][0] if key in QUANTIZED else key


def quantization_method(name: str) -> str | None:
    key = canonical_dtype(name)
    return QUANTIZED[key][1] if key in QUANTIZED else None


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[base_dtype(name)]


def rounded_embed_scale(hidden_size: int, dtype: str) -> float:
    # HF casts sqrt(hidden) to the weight dtype before multiplying, so the runtime must see the same rounding
    return torch.tensor(math.sqrt(hidden_size), dtype=torch_dtype(dtype)).item()
