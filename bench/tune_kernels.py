"""Time every Triton kernel's tile candidates at the 26B-A4B's and the 31B's real shapes; print the fastest.

Each kernel takes its tiles from one small function (paged_decode.decode_tiles, paged_prefill.prefill_tiles,
moe_gemm.expert_tiles, moe_gemv.expert_gemv_tiles, fp8_gemm.w8a16_tiles, gemv.gemv_tiles). For every shape below this script swaps in each candidate,
runs the kernel once (Triton compiles it), checks the output against the current tiles' output (a wrong
candidate is reported, never chosen), then times it: on CUDA through a CUDA graph
(triton.testing.do_bench_cudagraph), so the GPU time is measured and not the host's launch cost.
The `w8a16-switch` cases time the two FP8 linear paths (W8A16 kernel vs quantized activations and
torch._scaled_mm) over the row counts around linear.W8A16_MAX_ROWS; the `gemv-switch` cases time
linear() at one and four rows with and without the matrix-vector kernel (linear.takes_gemv; without it,
cuBLAS for bf16 weights, W8A16 for FP8 ones), each with what it reads per second; `expert-gemv-switch`
likewise times one or two tokens' experts as one matrix-vector product per routed row against the
16-row tiles (moe_gemv.takes_expert_gemv). The timed runs take identical copies of the weights in
turn (`copies`), so a weight smaller than the 50 MB L2 is read from HBM each time, as in a decode
step (the first H100 run reused one, and the 26B-A4B's linears read up to 3,526 GB/s from L2).

    python -m bench.tune_kernels [--kernels decode,prefill,moe,w8a16,w8a16-switch,gemv,gemv-switch,
                                           expert-gemv,expert-gemv-switch] [--models 26b,31b]
                                 [--shapes M=16,M=64]
                                 [--results FILE.jsonl] [--dry-run]

A result line per (case, candidate) is appended to --results as JSON. What to change in the tile
functions is then read off the printed table; nothing is changed automatically. Without CUDA, or with
--dry-run, tiny shapes and two candidates per case run under Triton's interpreter, which tests the
script (tests/unit/test_tune_kernels_dry_run.py); those times say nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from types import ModuleType

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when triton is first imported, just below

import triton  # noqa: E402

from bench.tune_cases import Case, dry_cases, model_cases  # noqa: E402


@contextmanager
def replaced(module: ModuleType, attr: str, candidate):
    """module.attr answers `candidate` (a tile function becomes a constant one) while the block runs."""
    old = getattr(module, attr)
    setattr(module, attr, (lambda *_: candidate) if callable(old) else candidate)
    try:
        yield
    finally:
        setattr(module, attr, old)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp(min=1e-6))


def time_ms(run: Callable[[], torch.Tensor], device: torch.device) -> float:
    if device.type == "cuda":
        return triton.testing.do_bench_cudagraph(run, rep=20, return_mode="median")
    times = []
    for _ in range(2):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def tune(case: Case, device: torch.device, write) -> None:
    run = case.make_run(device)
    ref = run()  # the current tiles (and the kernel compiled once for them)
    rows = []
    for candidate in case.candidates:
        with replaced(case.module, case.attr, candidate):
            try:
                err = rel_error(run(), ref)
                ms = time_ms(run, device) if err < case.tolerance else float("nan")
                status = "ok" if err < case.tolerance else f"WRONG (relative error {err:.3g})"
            except Exception as e:  # noqa: BLE001  a candidate the compiler rejects (registers, shared memory)
                ms, status = (
                    float("nan"),
                    f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}",
                )
        rows.append((candidate, ms, status))
        write(
            {
                "kernel": case.kernel,
                "shape": case.shape,
                "candidate": list(candidate) if isinstance(candidate, tuple) else candidate,
                "ms": None if ms != ms else ms,
                "status": status,
            }
        )
    base = time_ms(run, device)  # the current choice, timed like the candidates
    timed = [r for r in rows if r[2] == "ok"]
    best = min(timed, key=lambda r: r[1]) if timed else None
    now = case.current()
    best_us, speedup = (best[1] * 1e3, base / best[1]) if best else (float("nan"), float("nan"))
    print(
        f"{case.kernel:12} {case.shape:44} now {str(now):22} {base * 1e3:10.1f} us   best {str(best[0]) if best else '-':22} "
        f"{best_us:10.1f} us  {speedup:5.2f}x",
        flush=True,
    )
    for candidate, _ms, status in rows:
        if status != "ok":
            print(f"    {str(candidate):22} {status}")
    if case.weight_bytes:  # weight-bound: what each choice reads per second (the H100's copy rate: ~2,960 GB/s)
        print(
            "    weight read: "
            + ", ".join(f"{c}: {case.weight_bytes / ms / 1e6:,.0f} GB/s" for c, ms, status in rows if status == "ok"),
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--kernels", default="decode,prefill,moe,w8a16,w8a16-switch,gemv,gemv-switch,expert-gemv,expert-gemv-switch"
    )
    p.add_argument("--models", default="26b,31b")
    p.add_argument(
        "--shapes",
        default=None,
        help="comma-separated: keep only the cases whose shape names one of these (say M=16,M=64)",
    )
    p.add_argument("--results", default=None, help="append one JSON line per (case, candidate) here")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes under the interpreter (tests the script)")
    args = p.parse_args(argv)

    dry = args.dry_run or not torch.cuda.is_available()
    device = torch.device("cpu" if dry else "cuda")
    kernels = set(args.kernels.split(","))
    unknown = kernels - {
        "decode",
        "prefill",
        "moe",
        "w8a16",
        "w8a16-switch",
        "gemv",
        "gemv-switch",
        "expert-gemv",
        "expert-gemv-switch",
    }
    if unknown:
        p.error(f"unknown kernels: {sorted(unknown)}")
    cases = dry_cases(kernels) if dry else [c for m in args.models.split(",") for c in model_cases(m, kernels)]
    if args.shapes:
        cases = [c for c in cases if any(s in c.shape for s in args.shapes.split(","))]
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu-interpreter"
    print(
        f"tuning on {gpu}: triton {triton.__version__}, torch {torch.__version__}; {len(cases)} cases"
        f"{' [dry run: tiny shapes, not speed figures]' if dry else ''}"
    )
    out = open(args.results, "a") if args.results else None  # noqa: SIM115  closed below
    torch.manual_seed(0)

    def write(record: dict) -> None:
        if out:
            out.write(json.dumps({"gpu": gpu, "triton": triton.__version__, **record}) + "\n")
            out.flush()

    try:
        for case in cases:
            tune(case, device, write)
    finally:
        if out:
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
