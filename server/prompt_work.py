"""Prompt rendering and tokenizing off the event loop.

Jinja rendering and tokenizing a long prompt take from milliseconds to seconds; on the event loop they
stall every stream and the health endpoints. They run here, in a small thread pool of their own (not
the engine thread, not the loop). The fast tokenizer's `encode` goes through its Rust batch API,
which releases the GIL, so tokenizing runs beside the loop; rendering holds the GIL but is bounded by
the size check (server/limits.py) done before it, and by admission (server/admission.py), which caps
how many requests are being prepared at once.

Threads, not processes, measured by `python -m bench.prompt_pool` (tiny engine's tokenizer, 2-core EPYC,
4 chats of 500,000 characters at once, 2 workers): threads 0.87 s, the loop's worst lag 26 ms, an
engine-like thread at 59% of its idle rate; processes 0.98 s, 8 ms, 71%. A process pool keeps the
neighbours quieter for giant prompts, but each worker loads its own tokenizer (seconds at startup,
memory per worker) and every prompt and its ids cross a pipe (+13% here). With the size bound and
admission in front, threads keep the loop within tens of milliseconds, so they stay.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor


class PromptWorkers:
    def __init__(self, max_workers: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="prompt")

    async def run(self, fn, /, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


async def offload(workers: PromptWorkers | None, fn, /, *args, **kwargs):
    """`fn(*args, **kwargs)` on the prompt workers (inline when the app has none)."""
    if workers is None:
        return fn(*args, **kwargs)
    return await workers.run(fn, *args, **kwargs)
