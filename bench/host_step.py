"""Host time of building one decode batch, without the model: what overlapped scheduling has to hide.

For B sequences at a context of C tokens, each step decodes one token per sequence. Measured per step
(median over the steps, CPU): the block tables made the old way (padded Python lists turned into a
tensor, every entry every step) against the device mirror (gemma_runtime/executor/device_block_tables.py: only
the entries that changed), and the model runner's whole batch build (slots, positions, tables).

    .venv/bin/python -m bench.host_step [--batch 256] [--contexts 1024,4096,8192]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.random_engine import make_random_engine
from gemma_runtime.api import SamplingParams
from gemma_runtime.config import ResolvedConfig
from gemma_runtime.executor.device_block_tables import DeviceBlockTables
from gemma_runtime.executor.model_runner import ModelRunner
from gemma_runtime.scheduling.block_manager import NO_BLOCK, BlockManager
from gemma_runtime.scheduling.scheduler import ScheduledSeq
from gemma_runtime.scheduling.sequence import Sequence

BLOCK = 16


def tables_from_lists(tables: list[list[int]]) -> torch.Tensor:
    """What the runner did before the device mirror: pad every table, copy every entry."""
    width = max((len(t) for t in tables), default=0) or 1
    return torch.tensor([t + [NO_BLOCK] * (width - len(t)) for t in tables], dtype=torch.int64)  # [B, width]


def measure(spec, weights: dict[str, torch.Tensor], batch: int, context: int, steps: int) -> dict[str, float]:
    pages = batch * (-(-(context + steps) // BLOCK) + 1)
    blocks = BlockManager(BLOCK, pages, pages, spec.text.sliding_window)
    # the runner only builds batches here: one KV page per pool is enough, the forward never runs
    config = ResolvedConfig(
        device=torch.device("cpu"),
        dtype=torch.bfloat16,
        block_size=BLOCK,
        num_full_blocks=1,
        num_sliding_blocks=1,
        max_num_seqs=batch,
        max_num_batched_tokens=batch,
        max_model_len=context + steps + 1,
        default_image_soft_tokens=280,
        seed=0,
        decode_graph_max_batch=0,
        capture_graphs=False,
        prefill_graph_max_tokens=0,
        overlap_scheduling=False,
        moe_side_stream=False,
        enable_prefix_caching=False,
    )
    runner = ModelRunner(spec, weights, config)
    seqs = []
    for i in range(batch):
        seq = Sequence(f"s{i}", [1] * context, SamplingParams(), frozenset())
        blocks.allocate(seq.block_tables, 0, context)
        seq.num_computed = context - 1
        seqs.append(seq)
    mirror = DeviceBlockTables(batch, -(-(context + steps) // BLOCK), torch.device("cpu"))
    times: dict[str, list[float]] = {"lists_ms": [], "mirror_ms": [], "build_batch_ms": []}
    for _ in range(steps):
        for seq in seqs:
            blocks.allocate(seq.block_tables, seq.num_computed, 1)
        for kind in ("full", "sliding"):
            t0 = time.perf_counter()
            tables_from_lists([getattr(s.block_tables, kind) for s in seqs])
            times["lists_ms"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        mirror.gather([s.request_id for s in seqs], [s.block_tables for s in seqs])
        times["mirror_ms"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        runner._build_batch([ScheduledSeq(s, 1) for s in seqs])
        times["build_batch_ms"].append(time.perf_counter() - t0)
        for seq in seqs:  # the token is computed and a new one sampled
            seq.num_computed += 1
            seq.output_token_ids.append(1)
    out = {
        k: 1e3 * statistics.median(v[len(v) // 4 :]) for k, v in times.items()
    }  # first steps: the mirror's rows fill
    out["lists_ms"] *= 2  # both geometries
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--contexts", default="1024,4096,8192")
    p.add_argument("--steps", type=int, default=24)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="host-step-") as tmp:
        made = make_random_engine("tiny", "bf16", torch.device("cpu"), Path(tmp) / "tiny")
        print(f"batch {args.batch}, block size {BLOCK}, CPU, torch {torch.__version__}")
        print(f"{'context':>8} {'tables: lists (ms)':>20} {'tables: mirror (ms)':>20} {'whole batch build (ms)':>24}")
        for context in (int(c) for c in args.contexts.split(",")):
            r = measure(made.spec, made.weights, args.batch, context, args.steps)
            print(f"{context:>8} {r['lists_ms']:>20.2f} {r['mirror_ms']:>20.2f} {r['build_batch_ms']:>24.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
