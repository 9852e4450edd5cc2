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

--decode-graphs and --overlap switch the decode path's CUDA graphs and overlapped scheduling (default:
the runtime's own choice, on for CUDA) so their effect can be measured one at a time.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import random
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.bench_checks import check_bench_args, check_model
from bench.random_engine import MODELS, active_bytes_per_token, make_random_engine, model_config, weights_in_memory
from bench.report import Figure, gpu_name, table, versions
from engine_builder.tiny.tokenizer import make_tiny_tokenizer
from gemma_runtime.api import GenerateRequest, SamplingParams
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine
from server.cli_errors import OneLineParser

GB = 1e9


@dataclass(frozen=True)
class Sizes:
    models: tuple[str, ...]
    dtypes: tuple[str, ...]
    batches: tuple[int, ...]  # decode batch sizes
    prompt: int  # prompt tokens of each decode-run sequence
    warmup_steps: int
    decode_steps: int  # timed decode steps
    ttft_prompt: int
    prefill_lens: tuple[int, ...]
    arrivals: int  # requests in the continuous-arrival run
    arrivals_per_step: int  # new requests joining before each step
    arrival_prompt: int
    arrival_output: int  # output tokens drawn in [arrival_output / 2, arrival_output]
    hf_batches: tuple[int, ...]
    hf_new_tokens: int
    block_size: int = 16


GPU_SIZES = Sizes(
    models=("26b", "31b"), dtypes=("bf16", "fp8"), batches=(1, 8, 32, 64, 256), prompt=64, warmup_steps=4,
    decode_steps=64, ttft_prompt=16, prefill_lens=(2048, 32768), arrivals=1024, arrivals_per_step=32,
    arrival_prompt=128, arrival_output=128, hf_batches=(1, 32), hf_new_tokens=32,
)  # fmt: skip
DRY_SIZES = Sizes(
    models=("tiny",), dtypes=("bf16", "fp8"), batches=(1, 4), prompt=8, warmup_steps=1, decode_steps=3,
    ttft_prompt=8, prefill_lens=(32, 96), arrivals=8, arrivals_per_step=2, arrival_prompt=8, arrival_output=6,
    hf_batches=(1, 4), hf_new_tokens=3, block_size=4,
)  # fmt: skip


class Clock:
    """Host wall time around device work: synchronise first, so queued kernels are counted."""

    def __init__(self, device: torch.device):
        self.device = device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def prompt_ids(n: int, rng: random.Random) -> list[int]:
    return [rng.randrange(3, 400) for _ in range(n)]  # ordinary ids of the tiny tokenizer; no image placeholders


def greedy(n_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=n_tokens, ignore_eos=True)


# ------------------------------------------------------------------ our runtime


def kv_bytes_per_token(spec) -> tuple[int, int]:
    """(full-layer, sliding-layer) K+V bytes per cached token, summed over the layers of each geometry."""
    out = {"full": 0, "sliding": 0}
    for layer in spec.text.layers:
        out[layer.type] += 2 * layer.num_kv_heads * layer.head_dim * 2  # K and V, bf16
    return out["full"], out["sliding"]


SWITCH = {"auto": None, "on": True, "off": False}


def system_name(graphs: bool | None, overlap: bool | None) -> str:
    """"ours", or for an ablation run what it turned off, so its figures never pass for the default's."""
    off = [name for name, switch in (("graphs", graphs), ("overlap", overlap)) if switch is False]
    return "-".join(["ours"] + [f"no-{name}" for name in off])


STEP_TOKENS = 2048  # the engine's token budget per step (max_num_batched_tokens)


def decode_max_tokens(sizes: Sizes, batch: int) -> int:
    """Output tokens each sequence of a decode run is given. The batch's prompts take several steps to
    prefill (STEP_TOKENS a step, and one more step of lag with overlapped scheduling), so the sequences
    prefilled first run that many tokens ahead of the last; each must still be running at the last timed
    step, or the batch shrinks inside the measurement."""
    prefill_steps = -(-batch * sizes.prompt // (STEP_TOKENS - batch))  # running sequences' decode tokens share the budget
    return sizes.warmup_steps + sizes.decode_steps + 2 + prefill_steps + 1


def runtime_config(spec, sizes: Sizes, device: torch.device, graphs: bool | None = None, overlap: bool | None = None,
                   moe_side_stream: bool | None = None) -> RuntimeConfig:
    """Pages for the largest decode batch and the longest prefill, within 85% of what the weights leave free.
    The batch sizes that do not fit are skipped (and said so) rather than preempting mid-measurement."""
    bs, window = sizes.block_size, spec.text.sliding_window
    max_batch = max(sizes.batches + (min(sizes.arrivals, max(sizes.batches)),))
    ctx = max(sizes.prompt + max(decode_max_tokens(sizes, b) for b in sizes.batches),
              sizes.arrival_prompt + sizes.arrival_output + 1)
    longest = max(max(sizes.prefill_lens) + 2, ctx)
    step_tokens = STEP_TOKENS
    pages = lambda n: -(-n // bs)  # noqa: E731
    full_pages = max(pages(longest), max_batch * pages(ctx))
    sliding_pages = max_batch * (pages(min(ctx, window)) + 2) + pages(step_tokens) + pages(window) + 2
    if device.type == "cuda":
        full_tok, sliding_tok = kv_bytes_per_token(spec)
        free = torch.cuda.mem_get_info(device)[0] * 0.85 - 4 * GB  # activations, logits, allocator slack
        while max_batch > 1 and (full_pages * full_tok + sliding_pages * sliding_tok) * bs > free:
            max_batch //= 2
            full_pages = max(pages(longest), max_batch * pages(ctx))
            sliding_pages = max_batch * (pages(min(ctx, window)) + 2) + pages(step_tokens) + pages(window) + 2
    return RuntimeConfig(device=device.type, block_size=bs, num_full_blocks=full_pages, num_sliding_blocks=sliding_pages,
                         max_num_seqs=max_batch, max_num_batched_tokens=step_tokens, max_model_len=longest,
                         decode_graph_max_batch=None if graphs is None else max_batch if graphs else 0,
                         overlap_scheduling=overlap, moe_side_stream=moe_side_stream)  # fmt: skip


def run_until_first_tokens(engine: LLMEngine, ids: set[str]) -> None:
    seen: set[str] = set()
    while seen != ids:
        seen.update(o.request_id for o in engine.step() if o.token_ids)


def drain(engine: LLMEngine) -> None:
    while engine.has_unfinished():
        engine.step()


def measure_decode(engine: LLMEngine, batch: int, sizes: Sizes, clock: Clock, rng: random.Random) -> tuple[float, float]:
    """(tokens/s per user, tokens/s in total) over decode steps with `batch` sequences all running."""
    n = decode_max_tokens(sizes, batch)
    ids = {f"decode-{batch}-{i}" for i in range(batch)}
    for rid in sorted(ids):
        engine.add_request(GenerateRequest(rid, prompt_ids(sizes.prompt, rng), greedy(n)))
    run_until_first_tokens(engine, ids)
    for _ in range(sizes.warmup_steps):
        engine.step()
    start = clock.now()
    produced = 0
    for _ in range(sizes.decode_steps):
        produced += sum(len(o.token_ids) for o in engine.step())
    elapsed = clock.now() - start
    drain(engine)
    if produced != batch * sizes.decode_steps:
        raise RuntimeError(f"decode batch {batch}: {produced} tokens in {sizes.decode_steps} steps (the batch did not stay whole)")
    return sizes.decode_steps / elapsed, produced / elapsed


def time_one_request(engine: LLMEngine, prompt: list[int], clock: Clock) -> float:
    """Seconds from add_request to the request's first token (its prefill, chunked or not)."""
    start = clock.now()
    engine.add_request(GenerateRequest(f"one-{time.monotonic_ns()}", prompt, greedy(1)))
    while not any(o.token_ids for o in engine.step()):
        pass
    elapsed = clock.now() - start
    drain(engine)
    return elapsed


def measure_arrivals(engine: LLMEngine, sizes: Sizes, clock: Clock, rng: random.Random) -> float:
    """Output tokens/s while requests keep arriving faster than they finish (the engine stays full)."""
    pending = [GenerateRequest(f"arrive-{i}", prompt_ids(sizes.arrival_prompt, rng),
                               greedy(rng.randint(sizes.arrival_output // 2, sizes.arrival_output)))
               for i in range(sizes.arrivals)]  # fmt: skip
    produced = 0
    start = clock.now()
    while pending or engine.has_unfinished():
        for _ in range(min(sizes.arrivals_per_step, len(pending))):
            engine.add_request(pending.pop())
        produced += sum(len(o.token_ids) for o in engine.step())
    return produced / (clock.now() - start)


def copy_bandwidth(device: torch.device, clock: Clock) -> float:
    """Bytes/s of a large device-to-device copy, counting bytes read plus bytes written."""
    n = (1 << 30) if device.type == "cuda" else (1 << 24)
    src = torch.empty(n, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(10):
        start = clock.now()
        dst.copy_(src)
        times.append(clock.now() - start)
    return 2 * n / statistics.median(times)


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # CPU: the process's peak RSS


def measure_ours(model: str, dtype: str, sizes: Sizes, device: torch.device, workdir: Path, bandwidth: float,
                 record, graphs: bool | None = None, overlap: bool | None = None) -> None:  # fmt: skip
    """Runs every measurement on one random engine."""
    clock, rng = Clock(device), random.Random(0)
    system = system_name(graphs, overlap)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    made = make_random_engine(model, dtype, device, workdir / f"{model}-{dtype}")
    floor = bandwidth / active_bytes_per_token(made.spec.text, made.weights)
    config = runtime_config(made.spec, sizes, device, graphs, overlap)
    with weights_in_memory(made.weights):
        engine = LLMEngine(made.engine_dir, config)
    print(f"  {model} {dtype}: decode graphs {engine.runner.graphs.batch_sizes if engine.runner.graphs else 'off'}, "
          f"overlap {'on' if engine.overlap else 'off'}", flush=True)
    made = None  # the engine holds the weights now

    record(model, dtype, system, "bandwidth_floor_tokens_per_s", 1, floor, "tok/s")
    record(model, dtype, system, "ttft_ms", 1, 1e3 * statistics.median(
        [time_one_request(engine, prompt_ids(sizes.ttft_prompt, rng), clock) for _ in range(6)][1:]), "ms")  # first: warm-up
    for n in sizes.prefill_lens:
        time_one_request(engine, prompt_ids(n, rng), clock)  # warm-up at this length (kernel tiles, allocator)
        record(model, dtype, system, f"prefill_{n}_tokens_per_s", 1, n / time_one_request(engine, prompt_ids(n, rng), clock), "tok/s")
    for batch in sizes.batches:
        if batch > config.max_num_seqs:
            print(f"  skip {model} {dtype} decode batch {batch}: the KV budget holds {config.max_num_seqs} sequences", file=sys.stderr)
            continue
        per_user, total = measure_decode(engine, batch, sizes, clock, rng)
        record(model, dtype, system, "decode_tokens_per_s_per_user", batch, per_user, "tok/s")
        record(model, dtype, system, "decode_tokens_per_s_total", batch, total, "tok/s")
    record(model, dtype, system, "peak_output_tokens_per_s", config.max_num_seqs, measure_arrivals(engine, sizes, clock, rng), "tok/s")
    record(model, dtype, system, "peak_memory_gb", 0, peak_memory_gb(device), "GB")
    del engine
    release(device)


# ------------------------------------------------------------------ transformers


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@torch.inference_mode()
def measure_transformers(model: str, hf_config, sizes: Sizes, device: torch.device, record) -> None:
    """Eager transformers decode in bf16 at the same dimensions: (t(1 + N tokens) - t(1 token)) / N."""
    from transformers import Gemma4ForCausalLM

    clock, rng = Clock(device), random.Random(1)
    with torch.device(device):
        hf = Gemma4ForCausalLM._from_config(hf_config.text_config, dtype=torch.bfloat16).eval()

    def timed(ids: torch.Tensor, new: int) -> float:
        start = clock.now()
        hf.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)  # noqa: F821  (deleted after its last call)
        return clock.now() - start

    for batch in sizes.hf_batches:
        ids = torch.tensor([prompt_ids(sizes.prompt, rng) for _ in range(batch)], device=device)  # [batch, prompt]
        timed(ids, 2)  # warm-up
        first = timed(ids, 1)
        whole = timed(ids, 1 + sizes.hf_new_tokens)
        per_user = sizes.hf_new_tokens / max(whole - first, 1e-9)
        record(model, "bf16", "transformers", "decode_tokens_per_s_per_user", batch, per_user, "tok/s")
        record(model, "bf16", "transformers", "decode_tokens_per_s_total", batch, per_user * batch, "tok/s")
    del hf
    release(device)


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="the tiny engine on CPU with small sizes (tests the script)")
    p.add_argument("--models", default=None, help="comma-separated: 26b,31b (default both; tiny in a dry run)")
    p.add_argument("--dtypes", default=None, help="comma-separated: bf16,fp8 (default both)")
    p.add_argument("--results-dir", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--decode-graphs", choices=SWITCH, default="auto", help="decode batches through CUDA graphs")
    p.add_argument("--overlap", choices=SWITCH, default="auto", help="schedule the next step while this one runs")
    p.add_argument("--transformers", choices=("on", "off"), default="on", help="also time transformers (batch 1 and 32)")
    p.add_argument("--ours", choices=("on", "off"), default="on",
                   help="off: only transformers (a run cut off before it, at the 31B's size, catches up)")
    args = p.parse_args(argv)
    check_bench_args(args, torch.cuda.is_available())

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
                    measure_ours(model, dtype, sizes, device, Path(tmp), bandwidth, record,
                                 SWITCH[args.decode_graphs], SWITCH[args.overlap])
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
