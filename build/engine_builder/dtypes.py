"""The engine dtype a user asked for, parsed once (engine_format.dtypes) with a builder's error, and the
embedding scale rounded as transformers rounds it."""

from __future__ import annotations

import math

import torch

from gemma_runtime.engine_format.dtypes import EngineDtype, parse_dtype

from .errors import BuildError


def engine_dtype(name: str | EngineDtype) -> EngineDtype:
    if isinstance(name, EngineDtype):
        return name
    try:
        return parse_dtype(name)
    except ValueError as e:
        raise BuildError(str(e)) from None


def rounded_embed_scale(hidden_size: int, dtype: str) -> float:
    # HF casts sqrt(hidden) to the weight dtype before multiplying, so the runtime must see the same rounding
    return torch.tensor(math.sqrt(hidden_size), dtype=engine_dtype(dtype).torch_dtype).item()
