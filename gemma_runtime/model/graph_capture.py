"""One CUDA graph per batch size over fixed buffers: the capture loop the step graphs (executor/) and the
MTP drafter's rounds (speculative/mtp_graphs.py) share.

`run(size)` runs the work of `size` sequences on the caller's static buffers and returns its output
tensor; capturing records those launches, and replaying writes the same output tensor again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch

log = logging.getLogger(__name__)


@torch.inference_mode()
def capture_by_size(
    sizes: Iterable[int], run: Callable[[int], torch.Tensor], pool=None, required: bool = True, what: str = ""
) -> tuple[dict[int, torch.cuda.CUDAGraph], dict[int, torch.Tensor], object]:
    """(graphs, outputs, pool) by size, captured largest first into `pool` (a new one when None): the
    smaller graphs fit inside the memory the largest reserved. required=False: a capture that fails
    leaves no graph (the caller runs its buffers eagerly) and logs one warning naming `what`, rather
    than failing the engine's start (for graphs not yet run on a GPU: docs/benchmarks.md)."""
    pool = pool if pool is not None else torch.cuda.graph_pool_handle()
    graphs: dict[int, torch.cuda.CUDAGraph] = {}
    outputs: dict[int, torch.Tensor] = {}
    try:
        for size in sorted(sizes, reverse=True):
            run(size)  # warm-up outside the capture: Triton compiles here
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                outputs[size] = run(size)
            graphs[size] = graph
    except RuntimeError as e:
        if required:
            raise
        graphs.clear()
        outputs.clear()
        log.warning("CUDA graphs of %s not captured (%s): those steps run eagerly", what, e)
    torch.cuda.synchronize()
    return graphs, outputs, pool
