"""Reads an engine's safetensors (one file or an index of shards) into a flat dict of device tensors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from gemma_runtime.engine_format.files import WEIGHTS_FILE, WEIGHTS_INDEX


def weight_files(engine_dir: Path) -> list[Path]:
    index = engine_dir / WEIGHTS_INDEX
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [engine_dir / n for n in names]
    single = engine_dir / WEIGHTS_FILE
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{engine_dir} has no {WEIGHTS_FILE} nor {WEIGHTS_INDEX}")


def load_weights(
    engine_dir: str | Path,
    device: torch.device,
    dtype: torch.dtype | None = None,
    read: Callable[[Any, str], torch.Tensor | None] | None = None,
) -> dict[str, torch.Tensor]:
    """Every tensor of the engine; floating tensors are cast to `dtype` when given, except FP8 weights
    and their float32 scales (`X_scale` beside an e4m3 `X`; other names ending in _scale are cast).
    `read(handle, name)` (a tensor-parallel rank's shard: parallel/loading.py) returns what to keep of
    a tensor from its safe_open handle, or None to skip it; by default the whole tensor."""
    files = weight_files(Path(engine_dir))
    fp8_scales = set()
    for path in files:  # headers only: which tensors are e4m3, so their scales keep float32
        with safe_open(str(path), framework="pt", device="cpu") as f:
            fp8_scales.update(name + "_scale" for name in f.keys() if f.get_slice(name).get_dtype().startswith("F8"))
    weights: dict[str, torch.Tensor] = {}
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                t = read(f, name) if read is not None else f.get_tensor(name)
                if t is None:
                    continue
                if dtype is not None and t.is_floating_point() and t.element_size() > 1 and name not in fp8_scales:
                    t = t.to(dtype)
                weights[name] = t.to(device)
    return weights
