"""python -m bench.verify --engine engines/<name> [--reference <checkpoint>]: `make verify` (see __init__)."""

from __future__ import annotations

import argparse
import gc
import sys

from server.cli_errors import OneLineParser, UserError

STEPS = 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(
        prog="python -m bench.verify",
        description="Check an engine against the Hugging Face checkpoint it was built from, run by transformers.",
    )
    p.add_argument("--engine", required=True, help="the engine folder (engines/<name>)")
    p.add_argument("--reference", default=None, help="the checkpoint folder or hub id (default: engine.json's source)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when a GPU is visible)")
    p.add_argument("--steps", type=int, default=STEPS, help=f"greedy steps after each prompt (default {STEPS})")
    p.add_argument(
        "--reference-dtype",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help="transformers' dtype (auto: float32 on the CPU and for float32 engines, else bfloat16)",
    )
    p.add_argument(
        "--arithmetic",
        choices=("auto", "native", "float32"),
        default="auto",
        help="our engine's arithmetic (auto: native on a GPU; float32 over the engine's stored weights on the CPU, "
        "whose bf16 kernels round differently on each processor)",
    )
    p.add_argument("--any-checkpoint", action="store_true", help="compare even if REFERENCE is not the engine's source")
    args = p.parse_args(argv)
    if args.steps < 0:
        p.error("--steps must be 0 or more")
    return args


def reference_dtype(choice: str, device: str, engine_dtype: str):
    import torch

    if choice != "auto":
        return getattr(torch, choice)
    # the CPU's bf16 kernels differ by processor (AMX, AVX512, AVX2): float32 arithmetic there
    return torch.float32 if device == "cpu" or engine_dtype == "float32" else torch.bfloat16


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from gemma_runtime.config import default_device
    from gemma_runtime.engine_format.spec import EngineSpec
    from server.preflight import check_device, check_engine_dir

    from .compare import perplexity_figures, pooled_figures, prompt_figures
    from .ours import load_engine, run_ours
    from .prompts import PROMPTS
    from .reference import resolve_reference
    from .report import table, verdict
    from .theirs import load_reference, run_theirs
    from .thresholds import THRESHOLDS, engine_dtype_name

    engine_dir = check_engine_dir(args.engine)
    device = args.device or default_device()
    check_device(device)
    spec = EngineSpec.load(engine_dir)
    dtype = engine_dtype_name(spec)
    if dtype not in THRESHOLDS:
        raise UserError(f"{engine_dir} is a {dtype} engine: make verify has thresholds for {', '.join(THRESHOLDS)}")
    limits = THRESHOLDS[dtype]
    folder = resolve_reference(spec, engine_dir, args.reference, any_checkpoint=args.any_checkpoint)
    prompts = PROMPTS if spec.vision is not None else tuple(p for p in PROMPTS if not p.images)
    ref_dtype = reference_dtype(args.reference_dtype, device, dtype)
    arithmetic = "float32" if args.arithmetic == "float32" or (args.arithmetic == "auto" and device == "cpu") else None
    print(
        f"verify: {engine_dir} ({dtype}, {device}, {'float32' if arithmetic else 'native'} arithmetic) against "
        f"{folder} (transformers, {str(ref_dtype).removeprefix('torch.')})"
    )

    # one model at a time: on a GPU both may not fit at once
    engine = load_engine(engine_dir, device, arithmetic)
    ours = run_ours(engine, prompts, args.steps)
    del engine
    gc.collect()
    _empty_cache(device)
    theirs = run_theirs(load_reference(folder, ref_dtype, device), ours)

    rows = [prompt_figures(a, b, limits) for a, b in zip(ours[:-1], theirs[:-1])]
    ppl = perplexity_figures(ours[-1], theirs[-1], limits)
    against = f"transformers ({str(ref_dtype).removeprefix('torch.')})"  # an FP8 engine's agreement with bf16 on a GPU
    pooled = pooled_figures(rows, limits)
    print(table(rows, pooled, ppl, dtype, limits, against))
    ok, line = verdict(rows, pooled, ppl, str(engine_dir), str(folder))
    print(line, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _empty_cache(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
