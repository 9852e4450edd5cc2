"""A rank's shard of the engine's weights, sliced at load time straight from the safetensors files.

The runtime slices (safe_open(...).get_slice reads only the requested rows and columns from the
memory-mapped file) rather than asking the builder for per-rank files: one engine folder serves any
--tensor-parallel-size (and expert parallel or not) without a rebuild, and a rank's peak host memory
stays near its own shard (one tensor's slice at a time), which is what per-rank files would buy.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gemma_runtime.engine_format.spec import EngineSpec
from gemma_runtime.engine_format.weights import load_weights
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

    def read(handle, name: str) -> torch.Tensor | None:
        if name.startswith("vision.") and not with_vision:
            return None
        shard = plan.shard(name, spec.text)
        if shard is None:
            return handle.get_tensor(name)
        sliced = handle.get_slice(name)
        pieces = [sliced[index] for index in shard.pieces]  # each read alone from the file
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=shard.dim)

    return load_weights(engine_dir, device, dtype, read=read)
