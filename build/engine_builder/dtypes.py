"""Engine dtypes the builder accepts: a registry from the names users type to one canonical name."""

from __future__ import annotations

import math

import torch

from .errors import BuildError

# canonical name -> torch dtype; the canonical name is what engine.json and the engine folder carry
DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float32": torch.float32}
ALIASES: dict[str, str] = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32"}
# accepted by the parser so the user gets a precise answer rather than "unknown dtype"
NOT_BUILT_YET: dict[str, str] = {"fp8": "fp8 engines are not built yet", "fp8_e4m3": "fp8 engines are not built yet"}


def canonical_dtype(name: str) -> str:
    key = name.strip().lower()
    if key in NOT_BUILT_YET:
        raise BuildError(NOT_BUILT_YET[key])
    if key not in ALIASES:
        raise BuildError(f"unknown dtype {name!r}: use one of {', '.join(sorted(ALIASES))}")
    return ALIASES[key]


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[canonical_dtype(name)]


def rounded_embed_scale(hidden_size: int, dtype: str) -> float:
    # HF casts sqrt(hidden) to the weight dtype before multiplying, so the runtime must see the same rounding
    return torch.tensor(math.sqrt(hidden_size), dtype=torch_dtype(dtype)).item()
