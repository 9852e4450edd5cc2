"""The measurements of bench/run.py: our runtime on one random engine (decode per batch size, time to
first token, prefill, continuous arrivals, peak memory, the bandwidth floor) and eager transformers at
the same dimensions, each figure handed to `record`."""

from __future__ import annotations

import gc
import random
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.parallel_engine import open_parallel, parallel_system
from bench.random_engine import active_bytes_per_token, make_random_engine, weights_in_memory
from bench.run_config import GB, Clock, Sizes, decode_max_tokens, greedy, prompt_ids, runtime_config, system_name
from gemma_runtime.api import GenerateRequest
from gemma_runtime.engine.llm_engine import LLMEngine

# ------------------------------------------------------------------ our runtime


def run_until_first_tokens(engine: LLMEngine, ids: set[str]) -> None:
    seen: set[str] = set()
    while seen != ids:
        seen.update(o.request_id for o in engine.step() if o.token_ids)


def drain(engine: LLMEngine) -> None:
    while engine.has_unfinished():
        engine.step()


def measure_decode(
    engine: LLMEngine, batch: int, sizes: Sizes, clock: Clock, rng: random.Random
) -> tuple[float, float]:
    """(tokens/s per user, tokens/s in total) over decode steps with `batch` sequences all running."""
    spec = engine.config.speculative != "off"
    n = decode_max_tokens(sizes, batch, engine.config.num_speculative_tokens + 1 if spec else 1)
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
    # each sequence gains one token a step, or (speculating) one to N + 1
    if produced < batch * sizes.decode_steps or (not spec and produced != batch * sizes.decode_steps):
        raise RuntimeError(
            f"decode batch {batch}: {produced} tokens in {sizes.decode_steps} steps (the batch did not stay whole)"
        )
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
    pending = [
        GenerateRequest(
            f"arrive-{i}",
            prompt_ids(sizes.arrival_prompt, rng),
            greedy(rng.randint(sizes.arrival_output // 2, sizes.arrival_output)),
        )
        for i in range(sizes.arrivals)
    ]
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


def measure_ours(
    model: str,
    dtype: str,
    sizes: Sizes,
    device: torch.device,
    workdir: Path,
    bandwidth: float,
    record,
    graphs: bool | None = None,
    overlap: bool | None = None,
    speculative: str = "off",
    num_speculative_tokens: int = 3,
    parallel: tuple[int, bool] = (1, False),
) -> None:
    """Runs every measurement on one random engine (speculating when asked: then its counters and the
    step costs of bench/spec_decode.py too); `parallel`: (tensor-parallel size, expert parallel)."""
    clock, rng = Clock(device), random.Random(0)
    system = parallel_system(system_name(graphs, overlap), *parallel)
    system += f"-spec-{speculative}" if speculative != "off" else ""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    made = make_random_engine(model, dtype, device, workdir / f"{model}-{dtype}")
    if speculative == "mtp":  # the random engine has no drafter of its own: give it a random one
        from bench.spec_decode import attach_random_drafter

        attach_random_drafter(made.engine_dir, workdir / f"{model}-{dtype}-drafter")
    floor = bandwidth / active_bytes_per_token(made.spec.text, made.weights)
    config = runtime_config(
        made.spec,
        sizes,
        device,
        graphs,
        overlap,
        speculative=speculative,
        num_speculative_tokens=num_speculative_tokens,
    )
    if parallel[0] > 1:
        engine = open_parallel(made, config, *parallel)
    else:
        with weights_in_memory(made.weights):
            engine = LLMEngine(made.engine_dir, config)
    print(
        f"  {model} {dtype}: decode graphs {engine.runner.graphs.batch_sizes if engine.runner.graphs else 'off'}, "
        f"overlap {'on' if engine.overlap else 'off'}",
        flush=True,
    )
    made = None  # the engine holds the weights now

    record(model, dtype, system, "bandwidth_floor_tokens_per_s", 1, floor, "tok/s")
    record(
        model,
        dtype,
        system,
        "ttft_ms",
        1,
        1e3
        * statistics.median(
            [time_one_request(engine, prompt_ids(sizes.ttft_prompt, rng), clock) for _ in range(6)][1:]
        ),
        "ms",
    )  # first: warm-up
    for n in sizes.prefill_lens:
        time_one_request(engine, prompt_ids(n, rng), clock)  # warm-up at this length (kernel tiles, allocator)
        record(
            model,
            dtype,
            system,
            f"prefill_{n}_tokens_per_s",
            1,
            n / time_one_request(engine, prompt_ids(n, rng), clock),
            "tok/s",
        )
    for batch in sizes.batches:
        if batch > config.max_num_seqs:
            print(
                f"  skip {model} {dtype} decode batch {batch}: the KV budget holds {config.max_num_seqs} sequences",
                file=sys.stderr,
            )
            continue
        per_user, total = measure_decode(engine, batch, sizes, clock, rng)
        record(model, dtype, system, "decode_tokens_per_s_per_user", batch, per_user, "tok/s")
        record(model, dtype, system, "decode_tokens_per_s_total", batch, total, "tok/s")
    record(
        model,
        dtype,
        system,
        "peak_output_tokens_per_s",
        config.max_num_seqs,
        measure_arrivals(engine, sizes, clock, rng),
        "tok/s",
    )
    if engine.speculation is not None:
        report_speculation(
            engine, device, lambda metric, batch, value, unit: record(model, dtype, system, metric, batch, value, unit)
        )
    record(model, dtype, system, "peak_memory_gb", 0, peak_memory_gb(device), "GB")
    engine.close()  # the other tensor-parallel ranks, if any
    del engine
    release(device)


def report_speculation(engine: LLMEngine, device: torch.device, record) -> None:
    """The speculation counters over the runs above, then the draft/verify step costs and their curve."""
    from bench.spec_decode import measure as measure_spec_steps

    stats = engine.stats()
    record("spec_decode_drafted_tokens", 0, stats.spec_decode_drafted, "tokens")
    record("spec_decode_accepted_tokens", 0, stats.spec_decode_accepted, "tokens")
    mean = stats.spec_decode_emitted / stats.spec_decode_verifies if stats.spec_decode_verifies else 0.0
    record("spec_decode_mean_accepted_length", 0, mean, "tokens")
    measure_spec_steps(engine, engine.config.num_speculative_tokens, device, record)


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
