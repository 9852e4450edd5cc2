"""Read a Hugging Face checkpoint folder lazily: config, tensor names/shapes, one tensor at a time."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from gemma_runtime.engine_format.files import WEIGHTS_FILE, WEIGHTS_INDEX

from .errors import BuildError

ARCHITECTURE = "Gemma4ForConditionalGeneration"
MODEL_TYPE = "gemma4"


@dataclass(frozen=True)
class TensorInfo:
    file: str
    shape: tuple[int, ...]
    dtype: torch.dtype


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BuildError(f"{path} is not valid JSON ({what}): {e.msg} at line {e.lineno}") from None


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise BuildError(f"{folder} has no config.json: not a Hugging Face checkpoint folder")
    return _read_json(path, "config")


def load_config(folder: Path) -> dict:
    config = read_config(folder)
    archs = config.get("architectures") or []
    if config.get("model_type") != MODEL_TYPE:
        raise BuildError(
            f"{folder}: model_type is {config.get('model_type')!r}, expected {MODEL_TYPE!r} (a Gemma 4 checkpoint)"
        )
    if ARCHITECTURE not in archs:
        raise BuildError(f"{folder}: architectures {archs} do not include {ARCHITECTURE}")
    if not isinstance(config.get("text_config"), dict):
        raise BuildError(f"{folder}/config.json has no text_config")
    return config


def weight_files(folder: Path) -> list[str]:
    """The safetensors files the checkpoint names, checked to exist."""
    index = folder / WEIGHTS_INDEX
    if index.is_file():
        weight_map = _read_json(index, "weight index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise BuildError(f"{index} has no weight_map")
        files = sorted(set(weight_map.values()))
    elif (folder / WEIGHTS_FILE).is_file():
        files = [WEIGHTS_FILE]
    else:
        raise BuildError(f"{folder} has no {WEIGHTS_FILE} nor {WEIGHTS_INDEX}: no weights to convert")
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise BuildError(
            f"{folder}: shard {missing[0]} named in {WEIGHTS_INDEX} is missing"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    return files


def source_sha256(folder: Path, files: list[str]) -> str:
    # hashing 50 GB of weights would take minutes; names and sizes identify a checkpoint revision well enough
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for name in sorted(files):
        h.update(f"\n{name}:{(folder / name).stat().st_size}".encode())
    return h.hexdigest()


class Checkpoint:
    """One checkpoint folder: its config and every tensor's file/shape/dtype; `tensor(name)` reads one tensor."""

    def __init__(self, folder: str | Path, load: Callable[[Path], dict] = load_config) -> None:
        self.folder = Path(folder)
        self.config = load(self.folder)  # validates the config for its model type (the drafter has its own)
        self.files = weight_files(self.folder)
        self.tensors: dict[str, TensorInfo] = {}
        for file in self.files:
            try:
                with safe_open(str(self.folder / file), framework="pt") as f:
                    for name in f.keys():
                        sl = f.get_slice(name)
                        self.tensors[name] = TensorInfo(file, tuple(sl.get_shape()), _DTYPES[sl.get_dtype()])
            except Exception as e:  # noqa: BLE001 - a corrupt shard is bad input, reported in one line
                raise BuildError(f"{self.folder}: cannot read safetensors file {file}: {e}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def tensor(self, name: str) -> torch.Tensor:
        # A fresh handle per tensor: safetensors maps the file, and pages touched through a long-lived handle
        # stay resident (and count as ours) until it closes; this way only the tensor in flight is mapped.
        with safe_open(str(self.folder / self.tensors[name].file), framework="pt") as f:
            return f.get_tensor(name)

    def sha256(self) -> str:
        return source_sha256(self.folder, self.files)


_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
