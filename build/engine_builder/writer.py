"""Stream tensors into size-bounded safetensors shards whose headers are written before any data.

Shapes and dtypes are known from the plan, so each shard's header (names, offsets) is fixed up front and
every tensor goes to disk as soon as it exists: peak memory is one output tensor, not one shard.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from gemma_runtime.engine_format.files import WEIGHTS_INDEX, shard_names

SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float64: "F64",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class Entry:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()


def split_shards(entries: list[Entry], max_shard_bytes: int) -> list[list[Entry]]:
    shards: list[list[Entry]] = [[]]
    size = 0
    for e in entries:
        if shards[-1] and size + e.nbytes > max_shard_bytes:  # a tensor larger than the limit gets a shard of its own
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return shards


def _header(entries: list[Entry]) -> bytes:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for e in entries:
        header[e.name] = {
            "dtype": SAFETENSORS_DTYPES[e.dtype],
            "shape": list(e.shape),
            "data_offsets": [offset, offset + e.nbytes],
        }
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)  # data starts 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(raw)) + raw


def write_sharded(
    folder: Path,
    entries: list[Entry],
    produce: Callable[[Entry], torch.Tensor],
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    on_written: Callable[[Entry], None] = lambda e: None,
) -> list[str]:
    """Write `entries` in order, calling `produce` for each; returns the shard file names."""
    shards = split_shards(entries, max_shard_bytes)
    names = shard_names(len(shards))
    weight_map: dict[str, str] = {}
    for fname, shard in zip(names, shards):
        with open(folder / fname, "wb") as f:
            f.write(_header(shard))
            for e in shard:
                t = produce(e)
                if tuple(t.shape) != e.shape or t.dtype != e.dtype:
                    raise RuntimeError(f"{e.name}: produced {tuple(t.shape)} {t.dtype}, planned {e.shape} {e.dtype}")
                # [numel] bytes -> [numel * itemsize] uint8 view, written without another copy
                f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)
                weight_map[e.name] = fname
                on_written(e)
                del t
    if len(names) > 1:
        index = {"metadata": {"total_size": sum(e.nbytes for e in entries)}, "weight_map": weight_map}
        (folder / WEIGHTS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return names


def total_bytes(entries: Iterable[Entry]) -> int:
    return sum(e.nbytes for e in entries)
