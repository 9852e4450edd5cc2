"""An engine's dtype as one small value, parsed once from what users type ("bf16", "fp8", ...).

The canonical name goes into the engine folder's name; `base` is engine.json's dtype (the dtype of
every unquantized tensor); `quantization` is engine.json's quantization method, None for plain engines.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# engine.json dtype (and RuntimeConfig.dtype) -> torch dtype
TORCH_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class EngineDtype:
    name: str  # canonical: "bfloat16", "float32", "fp8"
    base: str  # engine.json's dtype: bfloat16 for fp8 engines
    quantization: str | None = None  # engine.json's quantization method ("fp8_e4m3")

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype of the unquantized tensors."""
        return TORCH_DTYPES[self.base]


# what the builder writes, by canonical name
ENGINE_DTYPES: dict[str, EngineDtype] = {
    "bfloat16": EngineDtype("bfloat16", "bfloat16"),
    "float32": EngineDtype("float32", "float32"),
    "fp8": EngineDtype("fp8", "bfloat16", "fp8_e4m3"),
}
ALIASES: dict[str, str] = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp32": "float32",
    "float32": "float32",
    "fp8": "fp8",
    "fp8_e4m3": "fp8",
}


def parse_dtype(name: str) -> EngineDtype:
    """ "bf16", "FP8", "float32"... -> its EngineDtype; ValueError names the accepted spellings."""
    key = name.strip().lower()
    if key not in ALIASES:
        raise ValueError(f"unknown dtype {name!r}: use one of {', '.join(sorted(ALIASES))}")
    return ENGINE_DTYPES[ALIASES[key]]
