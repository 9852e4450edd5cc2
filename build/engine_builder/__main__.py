"""python -m engine_builder --model tiny|26b|31b|<folder>|<hub id> [--dtype bf16|fp32|fp8] [--out-dir engines]
[--assistant auto|random|<folder>|<hub id>]"""

from __future__ import annotations

import argparse
import sys
import time

from .errors import OneLineParser
from .writer import DEFAULT_MAX_SHARD_BYTES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(
        prog="python -m engine_builder", description="Build a Gemma 4 engine folder from a Hugging Face checkpoint."
    )
    p.add_argument("--model", required=True, help="tiny, 26b, 31b, a local checkpoint folder, or a hub id (owner/name)")
    p.add_argument(
        "--dtype",
        default=None,
        help="bf16|bfloat16|fp32|float32|fp8 (default: float32 for tiny, bfloat16 otherwise; fp8: e4m3 linear layers with per-channel scales)",
    )
    p.add_argument("--out-dir", default="engines", help="where the engine folder goes (default: engines)")
    p.add_argument("--name", default=None, help="engine folder name (default: <model>-<dtype>)")
    p.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="longest sequence the engine serves (default: min(max_position_embeddings, 32768))",
    )
    p.add_argument(
        "--max-shard-gb", type=float, default=DEFAULT_MAX_SHARD_BYTES / 1024**3, help="output shard size bound in GiB"
    )
    p.add_argument(
        "--assistant",
        default=None,
        help="add the MTP drafter for speculative decoding: auto (the model's -assistant checkpoint), random (a tiny"
        " random one shaped for the target, for tests), a drafter folder or a hub id; kept in bf16 in FP8 engines",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from .convert import build_engine  # after parsing: --help stays instant

    start = time.perf_counter()
    try:
        path = build_engine(
            args.model,
            args.out_dir,
            dtype=args.dtype,
            name=args.name,
            max_model_len=args.max_model_len,
            progress=not args.no_progress,
            max_shard_bytes=int(args.max_shard_gb * 1024**3),
            assistant=args.assistant,
        )
    except KeyboardInterrupt:
        print("interrupted: no engine was written", file=sys.stderr)
        return 130
    print(f"engine ready: {path} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
