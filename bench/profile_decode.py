"""Where a decode step's time goes: the PyTorch profiler over steady decode steps of a random engine.

Builds the same random-weight engine as `make bench` (bench/random_engine.py), fills a batch, and
profiles `--steps` decode steps after a warm-up. Prints the wall time per step, the GPU kernel time per
step (their difference is time the GPU waited for the host), the kernel time by part of the model
(attention, experts, GEMMs, norms, sampling...), and the top kernels; writes a Chrome trace (open in
ui.perfetto.dev; gzipped) next to the JSON summary.

    python -m bench.profile_decode [--model 26b] [--dtype bf16] [--batch 1] [--steps 20]
                                   [--decode-graphs auto|on|off] [--overlap auto|on|off] [--gemv on|off]
                                   [--moe-side-stream on|off] [--trace on|off] [--out DIR] [--dry-run]

With --moe-side-stream on, kernels of the two streams overlap, so their summed time can exceed the wall time.

Without CUDA, or with --dry-run, the tiny engine runs on CPU with CPU operator times (tests the script,
tests/unit/test_profile_decode_dry_run.py); those times say nothing about the GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from bench.bench_checks import SWITCH
from bench.measure import run_until_first_tokens
from bench.random_engine import make_random_engine, weights_in_memory
from bench.run_config import DRY_SIZES, GPU_SIZES, Clock, greedy, prompt_ids, runtime_config
from gemma_runtime.api import GenerateRequest
from gemma_runtime.engine.llm_engine import LLMEngine
from gemma_runtime.model import gemma4
from gemma_runtime.model import linear as linear_module

# kernel (or, on CPU, operator) name -> part of the model; first match wins
PARTS: tuple[tuple[str, str], ...] = (
    (r"_decode_split|_decode_merge|_prefill_kernel|attention|index_copy|index_put", "attention (+KV writes)"),
    (r"_gate_up|_down_kernel|_expert_layout|_scatter_rows|_route", "MoE experts and routing"),
    (
        r"_w8a16|gemm|gemv|cutlass|xmma|sm90|nvjet|aten::mm|aten::addmm|aten::linear|scaled_mm",
        "GEMMs (projections, LM head)",
    ),
    (r"_rms_norm|_qkv_norm|_ffn_prologue|_moe_epilogue|rms|norm", "norms and rope"),
    (r"softmax|topk|sort|multinomial|argmax|exponential|cumsum|sampl", "sampling"),
    (r"geglu|gelu|tanh|mul|add|copy|fill|cat|index|gather|where", "elementwise and copies"),
)


def part_of(name: str) -> str:
    return next((part for pattern, part in PARTS if re.search(pattern, name, re.IGNORECASE)), "other")


def kernel_times(prof, on_cuda: bool) -> tuple[dict[str, float], int]:
    """(self time in microseconds per kernel (CUDA) or per operator (CPU), summed over the profile; how
    many of them ran)."""
    times: dict[str, float] = defaultdict(float)
    count = 0
    for evt in prof.key_averages():
        if on_cuda:
            if evt.device_type == DeviceType.CPU:
                continue  # an operator's own device time repeats its kernels' (aten::mm and its GEMM kernel)
            us = getattr(evt, "self_device_time_total", None)
            us = us if us is not None else getattr(evt, "self_cuda_time_total", 0.0)
        else:
            us = evt.self_cpu_time_total if evt.key.startswith("aten::") else 0.0
        if us > 0:
            times[evt.key] += us
            count += evt.count
    return dict(times), count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="26b", choices=("26b", "31b"))
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp8"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--decode-graphs", choices=SWITCH, default="auto")
    p.add_argument("--overlap", choices=SWITCH, default="auto")
    p.add_argument("--out", default="bench/results/profiles", help="folder for the trace and the summary")
    p.add_argument(
        "--gemv",
        choices=("on", "off"),
        default="on",
        help="the matrix-vector kernels where linear.takes_gemv and moe_gemv.takes_expert_gemv take "
        "them; off: cuBLAS, W8A16 and the 16-row expert tiles at every batch, to measure what they give",
    )
    p.add_argument(
        "--moe-side-stream",
        choices=SWITCH,
        default="auto",
        help="a MoE layer's dense MLP on a second stream beside its experts in the decode graphs "
        "(RuntimeConfig.moe_side_stream); on: in graphs of every size, auto: the runtime's choice",
    )
    p.add_argument("--trace", choices=("on", "off"), default="on", help="also write the gzipped Chrome trace")
    p.add_argument("--dry-run", action="store_true", help="the tiny engine on CPU (tests the script)")
    args = p.parse_args(argv)

    dry = args.dry_run or not torch.cuda.is_available()
    device = torch.device("cpu" if dry else "cuda")
    model = "tiny" if dry else args.model
    steps = min(args.steps, 3) if dry else args.steps
    warmup = 2 if dry else 8
    sizes = dataclasses.replace(
        DRY_SIZES if dry else GPU_SIZES, batches=(args.batch,), decode_steps=warmup + 2 * steps + 4, prefill_lens=(64,)
    )
    clock, rng = Clock(device), random.Random(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = (
        f"{model}-{args.dtype}-batch{args.batch}"
        + ("-no-gemv" if args.gemv == "off" else "")
        + {"auto": "", "on": "-side-stream", "off": "-no-side-stream"}[args.moe_side_stream]
    )
    if args.moe_side_stream == "on":  # read at each call, so the graphs captured below take it
        gemma4.SIDE_STREAM_MAX_ROWS = 1 << 30
    if args.gemv == "off":  # both are read at each call, so the graphs captured below take them too
        from gemma_runtime.kernels import moe_gemv  # triton: imported only when asked for

        linear_module.GEMV_MAX_ROWS = moe_gemv.EXPERT_GEMV_MAX_ROWS = 0

    with tempfile.TemporaryDirectory(prefix="gemma4-profile-") as tmp:
        made = make_random_engine(model, args.dtype, device, Path(tmp) / name)
        config = runtime_config(
            made.spec,
            sizes,
            device,
            SWITCH[args.decode_graphs],
            SWITCH[args.overlap],
            moe_side_stream=SWITCH[args.moe_side_stream],
        )
        if config.max_num_seqs < args.batch:
            print(f"batch {args.batch} does not fit the KV budget ({config.max_num_seqs} sequences)", file=sys.stderr)
            return 2
        with weights_in_memory(made.weights):
            engine = LLMEngine(made.engine_dir, config)
        made = None
        ids = {f"profile-{i}" for i in range(args.batch)}
        for rid in sorted(ids):
            engine.add_request(GenerateRequest(rid, prompt_ids(sizes.prompt, rng), greedy(warmup + 2 * steps + 8)))
        run_until_first_tokens(engine, ids)
        for _ in range(warmup):
            engine.step()

        start = clock.now()  # the same steps without the profiler: the step time the bench sees
        for _ in range(steps):
            engine.step()
        plain_ms = 1e3 * (clock.now() - start) / steps

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        start = clock.now()
        with profile(activities=activities) as prof:
            for _ in range(steps):
                engine.step()
            clock.now()  # the last step's kernels inside the profile
        wall_ms = 1e3 * (clock.now() - start) / steps  # includes the profiler's own overhead

    times, launches = kernel_times(prof, device.type == "cuda")
    per_step_ms = sum(times.values()) / 1e3 / steps
    parts: dict[str, float] = defaultdict(float)
    for kernel, us in times.items():
        parts[part_of(kernel)] += us / 1e3 / steps
    top = sorted(times.items(), key=lambda kv: -kv[1])[:25]

    what = "GPU kernel" if device.type == "cuda" else "CPU operator"
    side = f"up to {gemma4.SIDE_STREAM_MAX_ROWS} rows" if engine.runner.text.side_stream else "off"
    print(
        f"{name}: graphs {'on' if engine.runner.graphs else 'off'}, overlap {'on' if engine.overlap else 'off'}, "
        f"MoE side stream {side}"
    )
    print(
        f"wall per step {plain_ms:.3f} ms ({args.batch * 1e3 / plain_ms:.1f} tok/s); profiled {wall_ms:.3f} ms, of which "
        f"{what} time {per_step_ms:.3f} ms ({100 * per_step_ms / wall_ms:.0f}%) in {launches / steps:.0f} {what}s"
    )
    print(f"\n{'part':32} {'ms/step':>9} {'share':>6}")
    for part, ms in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"{part:32} {ms:9.3f} {100 * ms / per_step_ms:5.1f}%")
    print(f"\n{'kernel':70} {'us/step':>9}")
    for kernel, us in top:
        print(f"{kernel[:70]:70} {us / steps:9.1f}")

    trace = out / f"{name}.trace.json.gz"  # gzipped: a GPU trace runs to tens of MB
    if args.trace == "on":
        prof.export_chrome_trace(str(trace))
    summary = dict(
        model=model,
        dtype=args.dtype,
        batch=args.batch,
        steps=steps,
        device=str(device),
        graphs=bool(engine.runner.graphs),
        overlap=engine.overlap,
        gemv=args.gemv,
        moe_side_stream=bool(engine.runner.text.side_stream),
        side_stream_max_rows=gemma4.SIDE_STREAM_MAX_ROWS,
        wall_ms_per_step=plain_ms,
        profiled_wall_ms_per_step=wall_ms,
        kernel_ms_per_step=per_step_ms,
        kernels_per_step=launches / steps,
        parts_ms_per_step=dict(parts),
        top_kernels_us_per_step={k: us / steps for k, us in top},
    )
    (out / f"{name}.summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\ntrace: {trace}" if args.trace == "on" else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
