"""A rank's shard of the engine's weights, sliced at load time straight from the safetensors files.

The runtime slices (safe_open(...).get_slice reads only the requested rows and columns from the
memory-mapped file) rather than asking the builder for per-rank files: one engine folder serves any
--tensor-parallel-size (and expert parallel or not) without a rebuild. A rank's host memory stays near
its own shard: every tensor is copied out of the mapping, from a mapping of its own that is closed once
it is read, so the file pages a slice touched (the other ranks' halves of each row included) leave the
rank's memory tensor by tensor instead of accumulating until the whole file is read (bench/tp_memory.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from gemma_runtime.engine_format.spec import EngineSpec
from gemma_runtime.engine_format.weights import load_weights, weight_files
from gemma_runtime.parallel.plan import ShardPlan


def load_shard(
    engine_dir: str | Path,
    spec: EngineSpec,
    plan: ShardPlan,
    device: torch.device,
    dtype: torch.dtype,
    with_vision: bool,
) -> dict[str, torch.Tensor]:
    """This rank's weights: its slices of the split ones, the replicated ones whole; the vision tower's
    only when `with_vision` (it runs on rank 0 alone, which broadcasts the soft tokens it makes)."""

    file_of = {}
    for path in weight_files(Path(engine_dir)):  # headers only
        with safe_open(str(path), framework="pt", device="cpu") as f:
            file_of.update(dict.fromkeys(f.keys(), str(path)))

    def read(_shared_handle, name: str) -> torch.Tensor | None:
        if name.startswith("vision.") and not with_vision:
            return None
        shard = plan.shard(name, spec.text)
        # A mapping per tensor, closed on leaving: the shared handle's mapping would keep every page read
        # so far resident (and a strided slice, the columns of a row-parallel weight, faults in whole rows).
        with safe_open(file_of[name], framework="pt", device="cpu") as f:
            if shard is None:
                return f.get_tensor(name).clone()
            sliced = f.get_slice(name)
            pieces = [sliced[index].clone(memory_format=torch.contiguous_format) for index in shard.pieces]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=shard.dim)

    return load_weights(engine_dir, device, dtype, read=read)
