"""Plumbing shared by chat and completions: sampling params, length checks, and running the runtime's
streams (priming, merging n choices, aborting on client disconnect)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import AsyncIterator

import anyio
from starlette.requests import ClientDisconnect

from gemma_runtime.api import GenerateRequest, RequestError, RequestOutput, SamplingParams
from server.errors import APIError, bad_request
from server.structured import logit_bias_pairs


@dataclass(frozen=True)
class Limits:
    max_model_len: int
    image_tokens: int  # an upper bound of the prompt tokens one image becomes


def resolve_max_tokens(requested: int | None, prompt_len: int, limits: Limits, param: str) -> int:
    """The engine cannot go past max_model_len: a prompt or a max_tokens that would is a 400."""
    room = limits.max_model_len - prompt_len
    if room < 1:
        raise APIError(
            f"This model's maximum context length is {limits.max_model_len} tokens, but the prompt has {prompt_len} tokens. "
            "Shorten the prompt.",
            400,
            param="messages" if param == "max_completion_tokens" else "prompt",
            code="context_length_exceeded",
        )
    if requested is None:
        return room
    if requested > room:
        raise APIError(
            f"This model's maximum context length is {limits.max_model_len} tokens. However, you requested "
            f"{prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} for the completion). "
            "Reduce the prompt or the maximum number of tokens.",
            400,
            param=param,
            code="context_length_exceeded",
        )
    return requested


def sampling_params(req, defaults: dict, *, max_tokens: int, seed_offset: int, logprobs: int | None, skip_special_tokens: bool,
                    structured=None) -> SamplingParams:
    """Request fields, falling back to the engine's generation_config defaults (as vLLM does).
    `structured`: the grammar the reply must follow (server/structured.py)."""

    def pick(name: str, fallback):
        value = getattr(req, name)
        return value if value is not None else defaults.get(name, fallback)

    top_k = pick("top_k", 0)
    seed = req.seed + seed_offset if req.seed is not None else None
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=float(pick("temperature", 1.0)),
            top_p=float(pick("top_p", 1.0)),
            top_k=max(int(top_k or 0), 0),  # OpenAI-style -1 and 0 both mean off
            min_p=float(pick("min_p", 0.0)),
            seed=seed,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            stop=req.stop_list,
            stop_token_ids=tuple(req.stop_token_ids or ()),
            ignore_eos=req.ignore_eos,
            logprobs=logprobs,
            skip_special_tokens=skip_special_tokens,
            min_tokens=req.min_tokens,
            logit_bias=logit_bias_pairs(req.logit_bias),
            structured=structured,
        )
    except ValueError as e:
        raise bad_request(str(e))


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
