"""How long one large request body stalls the event loop, by where it is parsed and validated.

    python -m bench.parse_stall [--megabytes 30] [--repeat 3]

A ticker on the loop wakes every millisecond; its largest gap while a body is parsed and validated
(`ChatCompletionRequest`) is the stall every other request and stream would see. Three ways:
  on-loop   json.loads and pydantic on the loop (FastAPI's own path for small bodies; this tree's
            validators, so without the 2 s regex surrogate scan that main ran there before)
  thread    orjson and pydantic on a worker thread (server/body_route.py)
  process   orjson and pydantic in a process pool, the validated model pickled back
A thread cannot preempt a C call that holds the GIL (orjson's parse is one), so "thread" still stalls for
that call; a process does not, but pays for pickling the result back and for a pool of its own.
Each figure is printed as one `name: value` line (the median of --repeat runs, in seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context

from server.body_route import parse_and_validate
from server.protocol import ChatCompletionRequest


def on_loop(body: bytes):
    return ChatCompletionRequest.model_validate(json.loads(body))


async def worst_gap(work) -> tuple[float, float]:
    """(largest gap between 1 ms ticks, seconds the work took)"""
    gaps, stop = [0.0], asyncio.Event()

    async def ticker():
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps[0] = max(gaps[0], now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    await work()
    took = time.perf_counter() - t0
    stop.set()
    await task
    return gaps[0], took


async def measure(body: bytes, repeat: int) -> dict[str, list[tuple[float, float]]]:
    loop = asyncio.get_running_loop()
    threads = ThreadPoolExecutor(1)
    processes = ProcessPoolExecutor(1, mp_context=get_context("spawn"))
    await loop.run_in_executor(
        processes, parse_and_validate, b'{"messages":[{"role":"user","content":"hi"}]}', ChatCompletionRequest
    )

    async def inline():
        on_loop(body)

    async def thread():
        await loop.run_in_executor(threads, parse_and_validate, body, ChatCompletionRequest)

    async def process():
        await loop.run_in_executor(processes, parse_and_validate, body, ChatCompletionRequest)

    figures: dict[str, list[tuple[float, float]]] = {"on_loop": [], "thread": [], "process": []}
    for _ in range(repeat):  # interleaved: the machine's load drifts between runs
        for name, work in (("on_loop", inline), ("thread", thread), ("process", process)):
            figures[name].append(await worst_gap(work))
    threads.shutdown()
    processes.shutdown()
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--megabytes", type=int, default=30)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    words = "word " * (args.megabytes * 1024 * 1024 // 5)
    body = json.dumps({"messages": [{"role": "user", "content": words}], "max_tokens": 1}).encode()
    for name, runs in asyncio.run(measure(body, args.repeat)).items():
        print(f"{name}.loop_stall_s: {statistics.median(g for g, _ in runs):.3f}", flush=True)
        print(f"{name}.parse_s: {statistics.median(t for _, t in runs):.3f}", flush=True)


if __name__ == "__main__":
    main()
