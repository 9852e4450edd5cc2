"""The engine loop on a thread of the serving process (the default) against one in a process of its own
(`--engine-process`), without HTTP: what the worker's pipe costs per step (one pickled message each way)
at batch 1, where a step is shortest, and what freeing the server's interpreter lock gains under load.

    python -m bench.engine_loop --engine DIR [--concurrency 1,32] [--tokens 128] [--repeat 3]
    python -m bench.engine_loop --random 26b --dtype bf16 --device cuda [--out FILE.jsonl]

`--random MODEL` draws a random-weight engine at that model's true dimensions on the device
(bench/random_engine.py); with the engine in a worker, the worker draws it. Both engines are open at once
and their runs interleave in ABBA order (a shared machine's drift then hits both alike); `--separate` runs
each mode in a fresh process instead, one after the other, when two copies of the model do not fit the
device. Per mode and concurrency: tokens per second over all streams, the median gap between a stream's
outputs (inter-token latency) and the median time to its first output, each the median over --repeat runs
after a warm-up. The table last sets the worker's figures beside the thread's. Each mode keeps its own
intra-op threads unless `--torch-threads` sets both. Needs no server packages (the GPU image has none):
only the runtime and transformers' tokenizer.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("thread", "process")
PROMPT_TOKENS = 16


async def run_streams(engine, prompt_ids: list[int], streams: int, tokens: int) -> dict:
    """`streams` concurrent requests of `tokens` tokens each: tokens per second over all of them, and the
    median inter-token gap and time to first output over every stream (milliseconds)."""
    from gemma_runtime.api import GenerateRequest, SamplingParams

    gaps: list[float] = []
    firsts: list[float] = []

    async def one(i: int) -> int:
        sampling = SamplingParams(max_tokens=tokens, ignore_eos=True)
        request = GenerateRequest(f"loop-{i}-{time.monotonic_ns()}", prompt_ids, sampling)
        start = last = time.perf_counter()
        n = 0
        async for out in engine.generate(request):
            now = time.perf_counter()
            if n == 0:
                firsts.append(now - start)
            elif out.token_ids:
                gaps.append((now - last) / len(out.token_ids))
            n += len(out.token_ids)
            last = now
        return n

    start = time.perf_counter()
    counts = await asyncio.gather(*(one(i) for i in range(streams)))
    seconds = time.perf_counter() - start
    return {
        "tok_s": sum(counts) / seconds,
        "itl_ms": 1e3 * statistics.median(gaps) if gaps else float("nan"),
        "ttft_ms": 1e3 * statistics.median(firsts),
    }


def random_worker(model: str, dtype: str, engine_dir: str, config, conn) -> None:
    """The worker's entry point for `--random`: draws the weights on its device, then serves as usual."""
    import torch

    from bench.random_engine import make_random_engine, weights_in_memory
    from gemma_runtime.engine.engine_worker import serve

    made = make_random_engine(model, dtype, torch.device(config.device), Path(engine_dir))
    with weights_in_memory(made.weights):
        serve(engine_dir, config, conn)


def open_engine(mode: str, args, workdir: Path):
    """An AsyncEngine (thread) or ProcessAsyncEngine (process) over the chosen engine; a random engine's
    spec and tokenizer go into `workdir`."""
    from gemma_runtime.config import RuntimeConfig

    config = RuntimeConfig(
        device=args.device,
        max_num_seqs=max(args.concurrency),
        max_model_len=PROMPT_TOKENS + args.tokens + 64,  # pages for this run, not for the model's whole context
    )
    if mode == "process":
        from gemma_runtime.engine.engine_process import EngineProcess, ProcessAsyncEngine

        if not args.random:
            return ProcessAsyncEngine(EngineProcess(args.engine, config))
        from bench.random_engine import write_random_spec

        engine_dir = workdir / args.random
        write_random_spec(args.random, args.dtype, engine_dir)  # this side reads only the spec and tokenizer
        worker = functools.partial(random_worker, args.random, args.dtype)
        return ProcessAsyncEngine(EngineProcess(engine_dir, config, worker=worker))
    from gemma_runtime.engine.async_engine import AsyncEngine
    from gemma_runtime.engine.llm_engine import LLMEngine

    if not args.random:
        return AsyncEngine(LLMEngine(args.engine, config))
    import torch

    from bench.random_engine import make_random_engine, weights_in_memory

    made = make_random_engine(args.random, args.dtype, torch.device(args.device), workdir / args.random)
    with weights_in_memory(made.weights):
        return AsyncEngine(LLMEngine(made.engine_dir, config))


def torch_threads(engine) -> int:
    """The engine loop's intra-op threads: the worker's as it reported them, or this process's."""
    reported = getattr(engine.engine, "torch_threads", None)
    if reported is not None:
        return reported
    import torch

    return torch.get_num_threads()


def measure(modes: list[str], args) -> list[dict]:
    """Every concurrency's median figures for each mode, in this process: both engines open at once and
    their runs interleaved in ABBA order, so that a shared machine's drift hits both alike."""
    with tempfile.TemporaryDirectory(prefix="gemma4-loop-") as tmp:
        engines = {}
        try:
            for mode in modes:
                engines[mode] = open_engine(mode, args, Path(tmp) / mode)
            tokenizer = next(iter(engines.values())).tokenizer
            text = "Hello there, how are you today? " * PROMPT_TOKENS  # plain words: no image or tool markers
            prompt_ids = tokenizer.encode(text, add_special_tokens=False)[:PROMPT_TOKENS]
            rows = []
            for streams in args.concurrency:
                for engine in engines.values():  # warm-up: this batch size's first steps (graphs, allocator)
                    asyncio.run(run_streams(engine, prompt_ids, streams, min(args.tokens, 8)))
                runs: dict[str, list[dict]] = {mode: [] for mode in modes}
                for i in range(args.repeat):
                    for mode in modes if i % 2 == 0 else modes[::-1]:
                        runs[mode].append(asyncio.run(run_streams(engines[mode], prompt_ids, streams, args.tokens)))
                for mode in modes:
                    row = {"mode": mode, "concurrency": streams, "torch_threads": torch_threads(engines[mode])}
                    row.update({k: statistics.median(r[k] for r in runs[mode]) for k in runs[mode][0]})
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            for engine in engines.values():
                engine.shutdown()
    return rows


def in_child(mode: str, argv: list[str]) -> list[dict]:
    """`measure` of one mode in a fresh process (`--separate`): the rows it printed (its stdout's JSON lines)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.engine_loop", *argv, "--mode", mode], stdout=subprocess.PIPE, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"the {mode} run failed (exit {proc.returncode}); its errors are above")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def table(rows: list[dict]) -> str:
    """Per concurrency, each mode's figures and the worker's as a share of the thread's."""
    by = {(r["mode"], r["concurrency"]): r for r in rows}
    lines = ["concurrency  mode     torch threads     tok/s     ITL ms   TTFT ms   worker/thread tok/s"]
    for streams in sorted({r["concurrency"] for r in rows}):
        for mode in MODES:
            r = by.get((mode, streams))
            if r is None:
                continue
            thread = by.get(("thread", streams))
            share = f"{100 * r['tok_s'] / thread['tok_s']:.1f}%" if mode == "process" and thread else ""
            lines.append(
                f"{streams:>11}  {mode:<7} {r['torch_threads']:>13} {r['tok_s']:>9.1f} {r['itl_ms']:>9.2f} {r['ttft_ms']:>9.1f}   {share}"
            )
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.engine_loop")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--engine", help="an engine directory (make engine)")
    which.add_argument("--random", help="a random-weight engine at this model's dimensions: 26b, 31b or tiny")
    p.add_argument("--dtype", default="bf16", help="with --random: bf16 or fp8")
    p.add_argument("--device", default="cpu")
    p.add_argument("--concurrency", default="1,32", help="streams at once, one run each (comma-separated)")
    p.add_argument("--tokens", type=int, default=128, help="output tokens per stream")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per concurrency (the median is kept)")
    p.add_argument("--modes", default=",".join(MODES), help="thread, process, or both (each in a fresh process)")
    p.add_argument("--out", help="append each row as a JSON line to this file")
    p.add_argument(
        "--torch-threads",
        type=int,
        help="intra-op threads for both modes (default: each mode's own: torch's for the thread, every core "
        "but one for the worker on a CPU)",
    )
    p.add_argument(
        "--separate",
        action="store_true",
        help="each mode in a fresh process, one after the other (one copy of the model on the device at a time) "
        "rather than both open at once with their runs interleaved",
    )
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # the child's: measure this mode here
    args = p.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    modes = args.modes.split(",")
    unknown = sorted(set(modes) - set(MODES))
    if unknown or not modes:
        p.error(f"--modes: unknown {unknown}; choose from {list(MODES)}")
    args.modes = modes
    if args.random:
        from bench.random_engine import MODELS

        if args.random not in MODELS:
            p.error(f"--random: unknown model {args.random!r}; choose from {sorted(MODELS)}")
    elif not (Path(args.engine) / "engine.json").is_file():
        p.error(f"--engine {args.engine}: not an engine (no engine.json); build one with make engine")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)  # the thread's engine loop, here
        os.environ["OMP_NUM_THREADS"] = str(
            args.torch_threads
        )  # the worker's (engine_worker.cpu_threads) and children's
    if args.mode:  # a child of --separate
        measure([args.mode], args)
        return
    what = f"random {args.random} {args.dtype}" if args.random else args.engine
    print(f"engine loop: {what} on {args.device}, {args.tokens} tokens per stream, median of {args.repeat}", flush=True)
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    if args.separate:
        rows = [row for mode in args.modes for row in in_child(mode, argv)]
    else:
        rows = measure(args.modes, args)
    if args.out:
        with open(args.out, "a") as f:
            for row in rows:
                f.write(json.dumps({"date": date, "engine": what, "device": args.device, **row}) + "\n")
    print(table(rows), flush=True)


if __name__ == "__main__":
    main()
