"""Engine conversion memory: a ~1 GB random sharded Gemma 4 MoE checkpoint converted in a fresh process.

Prints build time, checkpoint size and the converting process's peak RSS (and its growth over the
post-import baseline). The checkpoint has HF tensor names, a valid config.json and the tiny tokenizer;
tensors are written shard by shard, no model is ever instantiated.

    .venv/bin/python -m bench.convert_memory [--layers 15] [--dtype bfloat16] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from engine_builder.tools.memcheck import measure_conversion, write_random_checkpoint

MB = 1024**2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=15, help="decoder layers (about 69 MB each in bf16)")
    p.add_argument("--dtype", default="bfloat16", help="engine dtype")
    p.add_argument("--shard-mb", type=int, default=256, help="checkpoint shard size")
    p.add_argument("--out-shard-mb", type=int, default=2048, help="engine shard size bound (the builder's default)")
    p.add_argument("--keep", default=None, help="work in this folder and keep it (default: a temp folder, removed)")
    args = p.parse_args()

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="convert-memory-"))
    try:
        start = time.perf_counter()
        folder, size = write_random_checkpoint(
            root / "ckpt",
            hidden_size=1024,
            intermediate_size=2048,
            num_layers=args.layers,
            num_experts=32,
            moe_intermediate_size=256,
            head_dim=128,
            dtype=torch.bfloat16,
            shard_bytes=args.shard_mb * MB,
        )
        print(
            f"checkpoint: {size / MB:,.0f} MiB in {len(list(folder.glob('*.safetensors')))} shards (written in {time.perf_counter() - start:.1f} s)"
        )
        r = measure_conversion(folder, root / "engines", dtype=args.dtype, shard_bytes=args.out_shard_mb * MB)
        engine = Path(r["engine"])
        out_size = sum(f.stat().st_size for f in engine.glob("*.safetensors"))
        print(f"engine:     {engine.name}, {out_size / MB:,.0f} MiB")
        print(f"build time: {r['seconds']:.1f} s ({size / MB / r['seconds']:,.0f} MiB/s)")
        print(
            f"peak RSS:   {r['peak_rss'] / MB:,.0f} MiB (baseline after imports {r['baseline_rss'] / MB:,.0f} MiB, "
            f"growth {r['peak_growth'] / MB:,.0f} MiB = {100 * r['peak_growth'] / size:.1f}% of the checkpoint)"
        )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
