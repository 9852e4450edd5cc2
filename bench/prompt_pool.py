"""Threads or processes for prompt work: which keeps the event loop and the engine thread moving?

    python -m bench.prompt_pool --engine engines/gemma-4-tiny-it-float32 [--chars 500000] [--requests 4]

The server renders chat templates and tokenizes off the event loop (server/prompt_work.py). Two ways to do
that: a thread pool, where rendering holds the GIL but the fast tokenizer's batch encode releases it, or a
process pool, which takes the GIL out of the picture but pickles each prompt there and its ids back. This
runs the server's own `render_prompt` and `tokenizer.encode` on `--requests` long chats at once in each
pool, while two neighbours run as they do in the server: an asyncio loop (its worst lag between 1 ms ticks)
and an "engine" thread doing small torch ops in a Python loop (its rate against an idle baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

import torch
from transformers import PreTrainedTokenizerFast

from server.chat import render_prompt
from server.protocol import ChatCompletionRequest

_worker_tokenizer = None


def _load_in_worker(engine_dir: str) -> None:
    global _worker_tokenizer
    torch.set_num_threads(1)
    _worker_tokenizer = PreTrainedTokenizerFast.from_pretrained(engine_dir)


def prepare(body: dict, tokenizer=None) -> int:
    """What the server does off the loop for one chat: render it, then tokenize it; returns the length."""
    tokenizer = tokenizer or _worker_tokenizer
    rendered = render_prompt(tokenizer, ChatCompletionRequest.model_validate(body))
    return len(tokenizer.encode(rendered.text, add_special_tokens=False))


class EngineStandIn(threading.Thread):
    """A Python loop of small tensor ops, like the engine thread between kernels: it needs the GIL often."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.steps = 0
        self.stop = threading.Event()

    def run(self) -> None:
        x = torch.ones(64, 64)
        while not self.stop.is_set():
            x = torch.tanh(x @ x * 1e-3)
            self.steps += 1


async def loop_lag(stop: asyncio.Event) -> float:
    worst = 0.0
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(0.001)
        worst = max(worst, time.perf_counter() - t0 - 0.001)
    return worst


async def measure(pool: Executor, bodies: list[dict], tokenizer) -> dict:
    loop = asyncio.get_running_loop()
    engine = EngineStandIn()
    engine.start()
    await asyncio.sleep(0.5)
    idle_rate = engine.steps / 0.5
    stop = asyncio.Event()
    lag = asyncio.create_task(loop_lag(stop))
    start_steps, t0 = engine.steps, time.perf_counter()
    args = [(b,) if isinstance(pool, ProcessPoolExecutor) else (b, tokenizer) for b in bodies]
    lengths = await asyncio.gather(*(loop.run_in_executor(pool, prepare, *a) for a in args))
    seconds = time.perf_counter() - t0
    rate = (engine.steps - start_steps) / seconds
    stop.set()
    engine.stop.set()
    return {
        "seconds": seconds,
        "tokens": sum(lengths),
        "loop_worst_lag_ms": 1000 * await lag,
        "engine_rate_share": rate / idle_rate,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", required=True)
    p.add_argument("--chars", type=int, default=500_000, help="characters per prompt (about 128K tokens of text)")
    p.add_argument("--requests", type=int, default=4, help="prompts prepared at once")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(args.engine)
    words = "the quick brown fox jumps over a lazy dog while numbers 12345 and symbols (#, %) pass by. "
    text = (words * (args.chars // len(words) + 1))[: args.chars]
    bodies = [{"model": "m", "messages": [{"role": "user", "content": f"{i} {text}"}]} for i in range(args.requests)]
    pools = {
        "threads": ThreadPoolExecutor(args.workers),
        "processes": ProcessPoolExecutor(args.workers, initializer=_load_in_worker, initargs=(args.engine,)),
    }
    for pool in pools.values():  # workers up and warm before timing
        asyncio.run(measure(pool, bodies[:1], tokenizer))
    print(f"{args.requests} prompts of {args.chars:,} characters at once, {args.workers} workers, {args.repeat} runs")
    print("| pool | seconds | tokens | loop worst lag ms | engine thread rate vs idle |")
    print("| --- | --- | --- | --- | --- |")
    for name, pool in pools.items():
        runs = [asyncio.run(measure(pool, bodies, tokenizer)) for _ in range(args.repeat)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(
            f"| {name} | {med['seconds']:.2f} | {int(med['tokens']):,} | {med['loop_worst_lag_ms']:.1f} "
            f"| {100 * med['engine_rate_share']:.0f}% |"
        )
    for pool in pools.values():
        pool.shutdown()


if __name__ == "__main__":
    main()
