"""The runtime streams' lifecycle, shared by chat and completions: priming (a refused request becomes an
HTTP error before any header), merging n choices, collecting them, aborting on client disconnect."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from starlette.requests import ClientDisconnect

from gemma_runtime.api import GenerateRequest, RequestError, RequestOutput
from server.errors import APIError, bad_request


class RuntimeStream:
    """One runtime request's outputs, primed with its first output; `aclose()` aborts it unless it
    already finished. Iteration ends after the output with `finished=True`."""

    def __init__(self, backend, request_id: str, gen, first: RequestOutput | None) -> None:
        self._backend, self.request_id, self._gen = backend, request_id, gen
        self._first = first
        self._done = first is None
        self._closed = False

    def __aiter__(self) -> RuntimeStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self._first is not None:
            out, self._first = self._first, None
        elif self._done:
            raise StopAsyncIteration
        else:
            try:
                out = await self._gen.__anext__()
            except StopAsyncIteration:
                self._done = True
                raise
        self._done = self._done or out.finished
        return out

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Shielded: this runs while the task is being cancelled (client disconnect), and anyio
        # cancels every unshielded await then, which would leave the request running.
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await self._gen.aclose()
            if not self._done:
                with contextlib.suppress(Exception):
                    await self._backend.abort(self.request_id)


async def primed(backend, request: GenerateRequest) -> RuntimeStream:
    """Start a runtime stream and wait for its first output, so that a refused request (RequestError)
    becomes a proper HTTP error before any response header is sent."""
    gen = backend.generate(request)
    try:
        first = await gen.__anext__()
    except StopAsyncIteration:
        first = None
    except RequestError as e:
        raise bad_request(str(e))
    except BaseException:
        stream = RuntimeStream(backend, request.request_id, gen, None)
        stream._done = False  # cancelled while waiting: the request may be queued, abort it
        await stream.aclose()
        raise
    return RuntimeStream(backend, request.request_id, gen, first)


async def start_all(backend, requests: list[GenerateRequest]) -> list[RuntimeStream]:
    """Prime all choices concurrently (the engine batches them); on any failure close the others."""
    results = await asyncio.gather(*(primed(backend, r) for r in requests), return_exceptions=True)
    failure = next((r for r in results if isinstance(r, BaseException)), None)
    if failure is not None:
        for r in results:
            if not isinstance(r, BaseException):
                await r.aclose()
        raise failure
    return list(results)


_END = object()


async def merge(streams: list[RuntimeStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleave the n choices' streams as outputs arrive, tagging each with its choice index."""
    if len(streams) == 1:
        try:
            async for out in streams[0]:
                yield 0, out
        finally:
            await streams[0].aclose()
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, stream) -> None:
        try:
            async for out in stream:
                await queue.put((i, out))
            await queue.put((i, _END))
        except Exception as e:
            await queue.put((i, e))
        finally:
            await stream.aclose()

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await queue.get()
            if item is _END:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)


async def close_all(merged, streams) -> None:
    """Deterministic cleanup when a stream's consumer stops early (async-for does not close the
    iterator it leaves, and garbage collection would abort the runtime requests only eventually)."""
    with anyio.CancelScope(shield=True):
        with contextlib.suppress(Exception):
            await merged.aclose()
        for s in streams:
            with contextlib.suppress(Exception):
                await s.aclose()


async def until_disconnect(http_request, coro):
    """Run `coro` (a non-streaming generation) but cancel it if the client goes away, so the runtime
    aborts the request and frees its KV blocks instead of finishing work nobody will read."""
    work = asyncio.ensure_future(coro)
    left = False

    async def watch() -> None:
        nonlocal left
        while True:
            message = await http_request.receive()
            if message["type"] == "http.disconnect":
                left = True
                work.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if left and not (current is not None and current.cancelling()):
            raise ClientDisconnect() from None  # the client left: not a server error (server/fault_barrier.py)
        raise
    finally:
        watcher.cancel()


def check_error(out: RequestOutput) -> None:
    if out.finish_reason == "error":
        raise APIError(f"The engine failed on this request: {out.error or 'unknown error'}", 500)


@dataclass
class CollectedChoice:
    """One choice of a non-streaming request, run to its end."""

    text: str
    logprobs: list
    final: RequestOutput | None


async def collect_choices(backend, metrics, requests: list[GenerateRequest]) -> list[CollectedChoice]:
    """Runs a non-streaming request's choices together (the engine batches them) and gathers each one's
    text, logprobs and final output, timing each for the metrics."""
    from server.metrics import RequestTimer

    streams = await start_all(backend, requests)
    choices = [CollectedChoice("", [], None) for _ in streams]
    texts: list[list[str]] = [[] for _ in streams]
    timers = [RequestTimer(metrics) for _ in streams]
    merged = merge(streams)
    try:
        async for i, out in merged:
            check_error(out)
            timers[i].output(len(out.token_ids))
            texts[i].append(out.text)
            choices[i].logprobs.extend(out.logprobs or ())
            if out.finished:
                choices[i].final = out
                timers[i].done(out.usage.prompt_tokens if out.usage else 0)
    finally:
        await close_all(merged, streams)
    for choice, parts in zip(choices, texts):
        choice.text = "".join(parts)
    return choices
