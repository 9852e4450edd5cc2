"""The asyncio face of the runtime, shared by the OpenAI server and the Triton backend.

The engine loop runs on its own thread; callers submit requests and read their outputs from an asyncio
queue. Input preparation (tokenizing, decoding and resizing images) runs in a thread pool so neither the
event loop nor the engine loop waits for it. A consumer that stops reading aborts its request.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gemma_runtime.api import EngineStats, GenerateRequest, RequestError, RequestOutput
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine

log = logging.getLogger(__name__)


class AsyncEngine:
    THREAD_NAME = "engine-loop"  # the thread running `_run`

    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self.spec = engine.spec
        self.tokenizer = engine.tokenizer
        self.generation_defaults = engine.generation_defaults
        self.max_model_len = engine.max_model_len
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="prepare")
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._lock = threading.Lock()

    @classmethod
    def from_engine_dir(cls, engine_dir: str | Path, config: RuntimeConfig | None = None) -> AsyncEngine:
        return cls(LLMEngine(engine_dir, config))

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(target=self._run, name=self.THREAD_NAME, daemon=True)
                self._thread.start()

    def shutdown(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping = True
            self._wake.set()
            thread.join(timeout=30)
        self._executor.shutdown(wait=False, cancel_futures=True)
        close = getattr(self.engine, "close", None)  # the tensor-parallel ranks
        if close is not None:
            close()

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def health(self) -> bool:
        """Whether the engine-loop thread is alive and the engine can step (every tensor-parallel rank is
        up); readiness turns 503 otherwise. Never waits on either."""
        healthy = getattr(self.engine, "healthy", None)
        return self.is_running and (healthy is None or healthy())

    def stats(self) -> EngineStats:
        return self.engine.stats()

    # --- requests ----------------------------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> AsyncIterator[RequestOutput]:
        """Streams the request's outputs; the last one has finished=True. Raises RequestError for bad input."""
        self.start()
        if request.request_id in self._streams:
            raise RequestError(f"request id {request.request_id!r} is already in flight")
        loop = asyncio.get_running_loop()
        prepared = await self._prepare(request)
        outputs: asyncio.Queue = asyncio.Queue()
        self._streams[request.request_id] = (loop, outputs)
        self._send(("add", request, prepared))
        finished = False
        try:
            while True:
                out = await outputs.get()
                if isinstance(out, BaseException):
                    raise out
                finished = out.finished
                yield out
                if finished:
                    return
        finally:
            if not finished:
                self._send(("abort", request.request_id))
            self._streams.pop(request.request_id, None)

    async def _prepare(self, request: GenerateRequest):
        """Tokenizing, images and grammars, off both the event loop and the engine loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.engine.prepare, request)

    async def abort(self, request_id: str) -> None:
        self._send(("abort", request_id))

    def _send(self, command: tuple) -> None:
        self._commands.put(command)
        self._wake.set()

    # --- the engine thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            self._drain_commands()
            if not self.engine.has_unfinished():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # noqa: BLE001  a failed step must not kill the loop: fail its requests
                log.exception("engine step failed")
                self._fail_all(exc)
                continue
            self._deliver_step(outputs)

    def _drain_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "add":
                _, request, prepared = command
                try:
                    self.engine.add_request(request, prepared)
                except Exception as exc:  # noqa: BLE001
                    self._deliver(request.request_id, exc)
            else:
                out = self.engine.abort(command[1])
                if out is not None:
                    self._deliver(out.request_id, out)

    def _fail_all(self, exc: Exception) -> None:
        for request_id in self.engine.abort_all():
            self._deliver(request_id, RuntimeError(f"engine step failed: {exc}"))

    def _deliver_step(self, outputs: list[RequestOutput]) -> None:
        """One step's outputs, one wake-up per event loop: `call_soon_threadsafe` writes to the loop's
        self-pipe each time, and one call per output (32 streams, 32 writes and callbacks per step) was
        a visible share of the CPU time per streamed token."""
        batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, RequestOutput]]] = {}
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is not None:
                batches.setdefault(stream[0], []).append((stream[1], out))
        for loop, items in batches.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the caller's loop is closed: nobody is listening any more
                pass

    def _deliver(self, request_id: str, item) -> None:
        stream = self._streams.get(request_id)
        if stream is None:
            return
        loop, outputs = stream
        try:
            loop.call_soon_threadsafe(outputs.put_nowait, item)
        except RuntimeError:  # the caller's loop is closed: nobody is listening any more
            pass


def _put_all(items: list[tuple[asyncio.Queue, RequestOutput]]) -> None:
    for outputs, out in items:
        outputs.put_nowait(out)
