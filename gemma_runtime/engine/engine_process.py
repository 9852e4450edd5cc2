"""`--engine-process`: the asyncio face of the runtime over an engine loop in a process of its own.

`AsyncEngine` runs the step loop on a thread of the server's process, where it shares one interpreter lock
with the event loop: on a small engine, whose step is mostly Python, the event loop's work per streamed
token (SSE chunks, socket writes) then delays every step. Here the step loop runs in a worker process
(gemma_runtime/engine/engine_worker.py) and this process keeps only what HTTP needs: the spec, the
tokenizer, and one pipe reader thread that hands each step's outputs to the event loop in one wake-up, as
`AsyncEngine` does. Requests, outputs and stats cross the pipe pickled, one message per step.
"""

from __future__ import annotations

import atexit
import multiprocessing
import pickle
import queue
import threading
from pathlib import Path

from gemma_runtime.api import GenerateRequest, RequestError
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.async_engine import AsyncEngine
from gemma_runtime.engine.engine_worker import Ready, StepMessage, serve
from gemma_runtime.engine_format.spec import EngineSpec, read_generation_defaults

STOP_TIMEOUT_S = 30  # for the worker to end after `stop`, before it is terminated


class EngineProcess:
    """The worker process, standing where `AsyncEngine` keeps its `LLMEngine`: the attributes the server
    reads (spec, tokenizer, generation defaults, max_model_len, the resolved config), the stats the last
    step reported, health and close. Loading the engine happens in the worker; this waits until it is
    ready, and raises what stopped it otherwise."""

    def __init__(self, engine_dir: str | Path, config: RuntimeConfig | None = None, worker=serve) -> None:
        """`worker`: the worker process's entry point (engine_worker.serve; a test injects faults there)."""
        from transformers import PreTrainedTokenizerFast

        self.engine_dir = Path(engine_dir)
        self.spec = EngineSpec.load(self.engine_dir)
        self.tokenizer = PreTrainedTokenizerFast.from_pretrained(str(self.engine_dir))
        self.generation_defaults = read_generation_defaults(self.engine_dir)
        context = multiprocessing.get_context("spawn")  # CUDA needs it; and no copy of this process's threads
        self._conn, worker_end = context.Pipe()
        # Not a daemon: a tensor-parallel engine starts its ranks from the worker. The worker ends when this
        # side's end of the pipe closes, so it does not outlive a crashed server.
        self.process = context.Process(target=worker, args=(str(self.engine_dir), config, worker_end), name="engine")
        self.process.start()
        worker_end.close()
        self._closed = False
        self._broken = False  # a send failed: the worker is gone
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_all, name="engine-pipe-send", daemon=True)
        self._sender.start()
        # Before multiprocessing's own exit hook, which joins non-daemon children: the worker ends once told.
        atexit.register(self.close)
        try:
            ready = self._conn.recv()
        except EOFError:
            self.process.join()
            self.close()
            raise RuntimeError(f"the engine process exited (code {self.process.exitcode}) while loading") from None
        if isinstance(ready, BaseException):
            self.process.join()
            self.close()
            raise ready
        assert isinstance(ready, Ready)
        self.max_model_len, self.config, self._stats = ready.max_model_len, ready.config, ready.stats
        self.torch_threads = ready.torch_threads

    def send(self, command: tuple) -> None:
        """Pickled here (what cannot cross raises to the caller), then queued for the sender thread, in
        order: a request with large images never blocks the caller (the event loop) while the worker is
        inside a step and not reading the pipe."""
        self._outbox.put(pickle.dumps(command, protocol=pickle.HIGHEST_PROTOCOL))

    def _send_all(self) -> None:
        while (data := self._outbox.get()) is not None:
            if self._broken:
                continue
            try:
                self._conn.send_bytes(data)  # what Connection.send writes; the worker's recv() unpickles it
            except OSError:  # the worker's end is closed
                self._broken = True

    def receive(self) -> StepMessage:
        message = self._conn.recv()
        self._stats = message.stats
        return message

    def stats(self):
        return self._stats

    def healthy(self) -> bool:
        return not self._closed and not self._broken and self.process.is_alive()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        if self.process.is_alive():
            self.send(("stop",))
        self._outbox.put(None)  # the sender ends after what it holds
        self._sender.join(STOP_TIMEOUT_S)
        if self.process.is_alive():
            self.process.join(STOP_TIMEOUT_S)
            if self.process.is_alive():
                self.process.terminate()
                self.process.join()
        self._conn.close()


class ProcessAsyncEngine(AsyncEngine):
    """`AsyncEngine` whose engine loop is the worker process: requests go down the pipe (the worker
    prepares them), and this process's loop thread only reads the pipe and delivers."""

    THREAD_NAME = "engine-pipe"
    _gone = False  # the pipe reader saw the worker end

    @classmethod
    def from_engine_dir(cls, engine_dir: str | Path, config: RuntimeConfig | None = None) -> ProcessAsyncEngine:
        return cls(EngineProcess(engine_dir, config))

    def shutdown(self) -> None:
        self.engine.close()  # the worker stops and its end of the pipe closes: the reader thread ends
        super().shutdown()

    async def _prepare(self, request: GenerateRequest):
        return None  # done in the worker, beside its engine

    def _send(self, command: tuple) -> None:
        if command[0] == "add" and (self._gone or not self.engine.healthy()):
            # The reader's last sweep may have passed this stream already: fail it here, never leave it waiting.
            self._deliver(command[1].request_id, RuntimeError("the engine process is not running"))
            return
        try:
            self.engine.send(command[:2])  # ("add", request) or ("abort", request id)
        except Exception as exc:  # noqa: BLE001  a request that cannot be pickled: fail it, not the server
            if command[0] != "add":
                raise
            self._deliver(command[1].request_id, RequestError(f"the request cannot reach the engine: {exc}"))

    def _run(self) -> None:
        while not self._stopping:
            try:
                message = self.engine.receive()
            except (EOFError, OSError):
                break
            self._deliver_step(message.outputs)
            for request_id, exc in message.failures:
                self._deliver(request_id, exc)
        self._gone = True  # before the sweep: a request registered after it fails in `_send`
        self.engine.process.join(timeout=1)  # for its exit code
        gone = RuntimeError(f"the engine process ended (exit code {self.engine.process.exitcode})")
        for request_id in list(self._streams):
            self._deliver(request_id, gone)
