"""Speculative decoding's step costs and the decode-rate curve they imply (issue 16's benchmark).

For each batch B (1, 8, 32): one plain decode step of B sequences (one query row each), one verify step
of B sequences with N drafts each (N + 1 rows each, one forward through the paged prefill attention),
and one draft step (the drafter proposing N tokens for the B sequences: host work for ngram, a small
model for mtp). At a mean accepted length L (tokens a sequence gains per verify step: 1 + kept drafts)
one user decodes L / (t_draft + t_verify) tokens/s against 1 / t_plain without speculation. Random
weights accept next to nothing, so the rates at L = 1.5, 2.5, 3.5 are computed from the measured step
costs, not observed. The verify/plain cost ratio per batch is also what `speculative_max_batch` is
chosen from (speculative/policy.py): speculation pays while (t_draft + t_verify) / t_plain < L.

    .venv/bin/python -m bench.spec_decode [--dry-run] [--models 26b,31b] [--dtype bf16|fp8]
                                          [--speculative ngram|mtp] [--num-speculative-tokens N]
                                          [--batches 1,8,32]

--dry-run: the tiny engine on CPU (its figures say nothing of a GPU's; they test the script and give
the CPU's own crossing). `make bench BENCH_ARGS="--speculative ngram"` runs the same measurement.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from bench.random_engine import make_random_engine, weights_in_memory
from bench.run_config import Clock, greedy, prompt_ids
from engine_builder.dtypes import engine_dtype
from gemma_runtime.api import GenerateRequest
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine
from gemma_runtime.engine_format.spec import EngineSpec
from gemma_runtime.scheduling.scheduler import ScheduledSeq
from gemma_runtime.speculative.protocol import DraftRequest

BATCHES = (1, 8, 32)
ACCEPTED_LENGTHS = (1.5, 2.5, 3.5)
PROMPT = 64


def _median_time(fn, clock: Clock, repeats: int) -> float:
    fn()  # warm-up (kernel compilation, allocator)
    times = []
    for _ in range(repeats):
        start = clock.now()
        fn()
        times.append(clock.now() - start)
    return statistics.median(times)


def step_costs(engine: LLMEngine, batch: int, n: int, clock: Clock, repeats: int) -> dict[str, float]:
    """Seconds per plain decode step, verify step and draft step of `batch` prefilled sequences."""
    rng = random.Random(batch)
    ids = [f"spec-{batch}-{i}" for i in range(batch)]
    for rid in ids:
        engine.add_request(GenerateRequest(rid, prompt_ids(PROMPT, rng), greedy(4 * n + 8)))
    drafted = engine.stats().spec_decode_drafted
    while any(len(engine.requests[r].seq.output_token_ids) == 0 for r in ids):
        engine.step()  # prefill every sequence (in one step: engine_config)
    if engine.stats().spec_decode_drafted != drafted:
        raise RuntimeError("the engine drafted while prefilling: the timed steps would not start alike")
    seqs = [engine.requests[r].seq for r in ids]
    for seq in seqs:  # pages for the verify's N + 1 positions; the timed steps rewrite the same slots
        engine.blocks.allocate(seq.block_tables, seq.num_computed, n + 1)
        seq.draft_token_ids = seq.token_ids[-n:]  # any ids: random weights keep none anyway

    def run(items):
        engine.runner.resolve(engine.runner.launch(items))

    costs = {
        "plain": _median_time(lambda: run([ScheduledSeq(s, 1) for s in seqs]), clock, repeats),
        "verify": _median_time(lambda: run([ScheduledSeq(s, 1, n) for s in seqs]), clock, repeats),
    }
    drafter = engine.speculation.drafter
    requests = [
        DraftRequest(
            s.request_id, s.token_ids, s.num_tokens - 1, n, engine.runner.hidden_of(s), s.block_tables, s.sampling
        )
        for s in seqs
    ]
    costs["draft"] = _median_time(lambda: drafter.propose(requests), clock, repeats)
    for rid in ids:
        engine.abort(rid)
    return costs


def curve(costs: dict[str, float]) -> dict[float, tuple[float, float]]:
    """Accepted length -> (tokens/s per user with speculation, speedup over plain decoding)."""
    plain = 1.0 / costs["plain"]
    out = {}
    for length in ACCEPTED_LENGTHS:
        rate = length / (costs["draft"] + costs["verify"])
        out[length] = (rate, rate / plain)
    return out


def measure(
    engine: LLMEngine, n: int, device: torch.device, record=None, repeats: int = 5, batches=BATCHES
) -> dict[int, dict[str, float]]:
    """Prints (and hands `record(metric, batch, value, unit)`) the step costs and the curve per batch;
    returns the step costs by batch."""
    clock, measured = Clock(device), {}
    for batch in batches:
        if batch > engine.config.max_num_seqs:
            print(f"  skip batch {batch}: the engine holds {engine.config.max_num_seqs} sequences")
            continue
        costs = measured[batch] = step_costs(engine, batch, n, clock, repeats)
        print(
            f"  batch {batch:>3}: plain step {1e3 * costs['plain']:.2f} ms, verify step ({n + 1} rows each) "
            f"{1e3 * costs['verify']:.2f} ms ({costs['verify'] / costs['plain']:.2f}x), draft step "
            f"{1e3 * costs['draft']:.3f} ms; plain {1 / costs['plain']:.1f} tok/s per user",
            flush=True,
        )
        for length, (rate, speedup) in curve(costs).items():
            print(f"      mean accepted length {length}: {rate:.1f} tok/s per user ({speedup:.2f}x plain)")
            if record:
                record(f"spec_decode_tok_per_s_per_user_at_L{length}", batch, rate, "tok/s")
        if record:
            for name in ("plain", "verify", "draft"):
                record(f"spec_{name}_step_ms", batch, 1e3 * costs[name], "ms")
    return measured


def attach_random_drafter(engine_dir: Path, workdir: Path) -> None:
    """--speculative mtp: a random drafter converted into the engine folder as `ASSISTANT=random` does,
    at the tiny builder's drafter dimensions (the published drafters' configs are not readable offline,
    so on a GPU this times the verify step and the drafter's reads of the target's KV, not its true size).
    The tests that serve or sample with MTP attach theirs the same way."""
    from engine_builder.assistant.convert import prepare_assistant, write_assistant
    from engine_builder.tiny.random_assistant import make_random_assistant

    spec = EngineSpec.load(engine_dir)
    folder = make_random_assistant(workdir / "drafter", spec.text)
    prepared = prepare_assistant(folder, "random", spec.text, engine_dtype(spec.dtype))
    write_assistant(prepared, engine_dir)
    replace(spec, assistant=prepared.spec).save(engine_dir)


def engine_config(device: torch.device, speculative: str, n: int, batches=BATCHES) -> RuntimeConfig:
    """Room for the largest batch, and speculation up to it, so that on a GPU the verify step replays its
    CUDA graph as the plain step replays the decode graph. The engine's own steps draft nothing: every
    sequence's prompt is prefilled in one step (the token budget holds the largest batch's prompts), and
    only a decoding sequence drafts."""
    return RuntimeConfig(
        device=device.type,
        max_num_seqs=max(batches),
        max_model_len=PROMPT + 8 * n + 64,
        max_num_batched_tokens=max(batches) * PROMPT,
        speculative=speculative,
        num_speculative_tokens=n,
        speculative_max_batch=max(batches),
        overlap_scheduling=False,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.spec_decode", description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="the tiny engine on CPU (tests the script)")
    p.add_argument("--models", default=None, help="comma-separated: 26b,31b (default both; tiny in a dry run)")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--speculative", choices=("ngram", "mtp"), default="ngram")
    p.add_argument("--num-speculative-tokens", type=int, default=3)
    p.add_argument("--batches", default=",".join(map(str, BATCHES)), help="comma-separated decode batch sizes")
    args = p.parse_args(argv)
    batches = tuple(int(b) for b in args.batches.split(","))
    if not args.dry_run and not torch.cuda.is_available():
        p.error("no CUDA device: run with --dry-run (the tiny engine on CPU)")
    device = torch.device("cpu" if args.dry_run else "cuda")
    models = ("tiny",) if args.dry_run else tuple((args.models or "26b,31b").split(","))
    n = args.num_speculative_tokens
    print(f"speculative decoding step costs ({args.speculative}, N={n}) on {device.type}")
    if not args.dry_run:
        print("random weights accept nothing: the curve is computed from the measured step costs")
    with tempfile.TemporaryDirectory(prefix="gemma4-spec-") as tmp:
        for model in models:
            made = make_random_engine(model, args.dtype, device, Path(tmp) / model)
            if args.speculative == "mtp":
                attach_random_drafter(made.engine_dir, Path(tmp) / f"{model}-drafter")
            with weights_in_memory(made.weights):
                engine = LLMEngine(made.engine_dir, engine_config(device, args.speculative, n, batches))
            made = None
            print(f"{model} {args.dtype}:")
            measure(engine, n, device, batches=batches)
            del engine
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
