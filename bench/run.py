"""make bench: our runtime against Hugging Face transformers at the 26B-A4B's and the 31B's true dimensions.

Random-weight engines are made directly on the GPU (bench/random_engine.py), in bf16 and FP8. Measured
per engine: decode tokens/s per user and in total at batch 1, 8, 32, 64, 256; time to first token for
a short prompt; prefill tokens/s for 2k- and 32k-token prompts; output tokens/s under continuous
arrivals at high concurrency; peak GPU memory. transformers runs the same dimensions (bf16, batch 1 and
32). The table shows both side by side with the ratio and the bandwidth floor (weight bytes read per
decode step at batch 1 over the measured copy bandwidth). One JSON line per figure is appended to
bench/results/<gpu>.jsonl.

With --dry-run, the same code runs on the tiny engine on CPU with small sizes, so the script itself is
tested (tests/unit/test_bench_dry_run.py); those figures mean nothing for speed. Without CUDA and without
--dry-run it stops with one line saying so (bench_checks.py checks the flags the same way).

    .venv/bin/python -m bench.run [--dry-run] [--models 26b,31b] [--dtypes bf16,fp8] [--results-dir bench/results]
                                  [--decode-graphs auto|on|off] [--overlap auto|on|off]
                                  [--transformers on|off] [--ours on|off]
                                  [--speculative off|ngram|mtp] [--num-speculative-tokens N]
                                  [--tensor-parallel-size N] [--enable-expert-parallel]

--decode-graphs and --overlap switch the decode path's CUDA graphs and overlapped scheduling (default:
the runtime's own choice, on for CUDA) so their effect can be measured one at a time.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from bench.bench_checks import SWITCH, check_bench_args, check_model
from server.cli_errors import OneLineParser


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="the tiny engine on CPU with small sizes (tests the script)")
    p.add_argument("--models", default=None, help="comma-separated: 26b,31b (default both; tiny in a dry run)")
    p.add_argument("--dtypes", default=None, help="comma-separated: bf16,fp8 (default both)")
    p.add_argument("--results-dir", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--decode-graphs", choices=SWITCH, default="auto", help="decode batches through CUDA graphs")
    p.add_argument("--overlap", choices=SWITCH, default="auto", help="schedule the next step while this one runs")
    p.add_argument(
        "--transformers", choices=("on", "off"), default="on", help="also time transformers (batch 1 and 32)"
    )
    p.add_argument(
        "--ours",
        choices=("on", "off"),
        default="on",
        help="off: only transformers (a run cut off before it, at the 31B's size, catches up)",
    )
    p.add_argument(
        "--speculative",
        choices=("off", "ngram", "mtp"),
        default="off",
        help="speculate in our runs: its counters and the draft/verify step costs (bench/spec_decode.py) too",
    )
    p.add_argument("--num-speculative-tokens", type=int, default=3, help="drafts per sequence per step")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="ranks our engine is split across (GPUs)")
    p.add_argument("--enable-expert-parallel", action="store_true", help="split the MoE's experts across the ranks")
    args = p.parse_args(argv)
    check_bench_args(args)
    # torch and the measuring code only now: a mistaken flag is told at once, not after their imports
    import torch

    from bench.measure import copy_bandwidth, measure_ours, measure_transformers
    from bench.random_engine import MODELS, model_config
    from bench.report import Figure, gpu_name, table, versions
    from bench.run_config import DRY_SIZES, GB, GPU_SIZES, Clock
    from engine_builder.tiny.tokenizer import make_tiny_tokenizer

    dry = args.dry_run
    device = torch.device("cpu") if dry else torch.device("cuda")
    sizes = DRY_SIZES if dry else GPU_SIZES
    models = tuple(args.models.split(",")) if args.models else sizes.models
    if dry:  # a dry run times the tiny engine for every real model named (a 31B would not fit a CPU's memory)
        models = tuple(dict.fromkeys("tiny" if m in MODELS else m for m in models))
    dtypes = tuple(args.dtypes.split(",")) if args.dtypes else sizes.dtypes
    date, gpu = dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), gpu_name(device, dry)
    print(f"bench on {gpu} ({versions()}){' [dry run: tiny engine on CPU, not speed figures]' if dry else ''}")
    figures: list[Figure] = []
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    out = open(results / f"{gpu}.jsonl", "a")  # noqa: SIM115  each figure lands as it is measured: a run cut off keeps them

    def record(model, dtype, system, metric, batch, value, unit) -> None:
        fig = Figure(date, gpu, model, dtype, system, metric, int(batch), float(value), unit)
        figures.append(fig)
        out.write(json.dumps(asdict(fig)) + "\n")
        out.flush()
        print(f"  {model} {dtype} {system} {metric} batch={batch}: {value:.3f} {unit}", flush=True)

    try:
        bandwidth = copy_bandwidth(device, Clock(device))
        print(f"copy bandwidth {bandwidth / GB:.1f} GB/s")
        with tempfile.TemporaryDirectory(prefix="gemma4-bench-") as tmp:
            for model in models:
                check_model(model, MODELS)
                hf_config = model_config(model, make_tiny_tokenizer(Path(tmp) / model))
                for dtype in dtypes if args.ours == "on" else ():
                    measure_ours(
                        model,
                        dtype,
                        sizes,
                        device,
                        Path(tmp),
                        bandwidth,
                        record,
                        SWITCH[args.decode_graphs],
                        SWITCH[args.overlap],
                        args.speculative,
                        args.num_speculative_tokens,
                        (args.tensor_parallel_size, args.enable_expert_parallel),
                    )
                if args.transformers == "on":
                    measure_transformers(model, hf_config, sizes, device, record)
    finally:
        out.close()
    print()
    print(table(figures))
    print(f"\n{len(figures)} figures appended to {results / f'{gpu}.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
