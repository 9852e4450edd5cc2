"""The engine loop of `--engine-process`: the runtime in a process of its own, driven over a pipe.

The server's process keeps HTTP, chat templates and SSE; this one keeps the model and its step loop, so
neither waits for the other's interpreter lock (on a small engine the step loop is mostly Python, and
the event loop's work per streamed token then delayed it; docs/benchmarks.md). Commands come in one at a
time (`add`, `abort`, `stop`); what a step produced goes back as one message: its outputs, the requests it
failed, and the engine's stats after it. Input preparation (tokenizing, images, grammars) runs in a small
pool here, as in the embedded engine, so a slow one never stalls the steps.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import signal
import socket
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

from gemma_runtime.api import GenerateRequest, RequestOutput
from gemma_runtime.config import RuntimeConfig

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.5  # nothing to step: block on the pipe (and the prepare pool's wake-ups) this long at most


@dataclass(frozen=True)
class Ready:
    """The engine's settings as resolved in the worker, which the server's side cannot resolve alone."""

    max_model_len: int
    config: RuntimeConfig
    stats: object  # EngineStats before any request
    torch_threads: int  # the worker's intra-op threads (cpu_threads)


@dataclass(frozen=True)
class StepMessage:
    outputs: list[RequestOutput]
    failures: list[tuple[str, BaseException]]  # (request id, what to raise in its stream)
    stats: object  # EngineStats after the step


class _Worker:
    def __init__(self, engine, conn: Connection) -> None:
        self.engine, self.conn = engine, conn
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="prepare")
        self.prepared: queue.SimpleQueue = queue.SimpleQueue()
        self.preparing: set[str] = set()
        self.wake_read, self.wake_write = socket.socketpair()  # the pool's finished prepares wake the loop
        self.outputs: list[RequestOutput] = []
        self.failures: list[tuple[str, BaseException]] = []
        self.changed = False

    def run(self) -> None:
        while True:
            idle = not self.engine.has_unfinished() and self.prepared.empty()
            for ready in wait([self.conn, self.wake_read], timeout=IDLE_WAIT_S if idle else 0):
                if ready is self.wake_read:
                    self.wake_read.recv(4096)
                elif not self._commands():
                    return
            self._add_prepared()
            if self.engine.has_unfinished():
                self._step()
            if self.outputs or self.failures or self.changed:
                self.conn.send(StepMessage(self.outputs, self.failures, self.engine.stats()))
                self.outputs, self.failures, self.changed = [], [], False

    def _commands(self) -> bool:
        """Every command waiting on the pipe; False on `stop` or when the server's side is gone."""
        while self.conn.poll():
            try:
                command = self.conn.recv()
            except EOFError:
                return False
            if command[0] == "add":
                self._prepare(command[1])
            elif command[0] == "abort":
                self._abort(command[1])
            else:
                return False
        return True

    def _prepare(self, request: GenerateRequest) -> None:
        self.preparing.add(request.request_id)
        future = self.pool.submit(self.engine.prepare, request)
        future.add_done_callback(lambda f, r=request: self._prepared(r, f))

    def _prepared(self, request: GenerateRequest, future: Future) -> None:
        self.prepared.put((request, future))
        self.wake_write.send(b"\0")

    def _abort(self, request_id: str) -> None:
        self.preparing.discard(request_id)  # still in the pool: dropped when it comes out
        out = self.engine.abort(request_id)
        if out is not None:
            self.outputs.append(out)
        self.changed = True

    def _add_prepared(self) -> None:
        while not self.prepared.empty():
            request, future = self.prepared.get()
            if request.request_id not in self.preparing:
                continue  # aborted while it was prepared
            self.preparing.discard(request.request_id)
            try:
                self.engine.add_request(request, future.result())
            except Exception as exc:  # noqa: BLE001  the request's own fault (RequestError): fail only it
                self.failures.append((request.request_id, portable(exc)))
            self.changed = True

    def _step(self) -> None:
        try:
            self.outputs.extend(self.engine.step())
        except Exception as exc:  # noqa: BLE001  a failed step must not end the loop: fail its requests
            log.exception("engine step failed")
            self.failures += [(rid, RuntimeError(f"engine step failed: {exc}")) for rid in self.engine.abort_all()]


def portable(exc: BaseException) -> BaseException:
    """`exc` if it crosses the pipe intact (RequestError does), else a RuntimeError that says what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001  any failure to pickle: send its text instead
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def cpu_threads(device: str, env: dict, cores: int) -> int | None:
    """torch's intra-op threads for a CPU engine in the worker: every core but one, which the server's
    process (event loop, SSE, sockets) needs beside it; None leaves torch's default (a GPU engine, or
    OMP_NUM_THREADS set by the user). On a 2-core machine with torch's default of 2 the HTTP path kept
    81-87% of the worker's rate against 91-103% with 1 (docs/benchmarks.md)."""
    if not device.startswith("cpu") or env.get("OMP_NUM_THREADS"):
        return None
    return max(1, cores - 1)


def serve(engine_dir: str, config: RuntimeConfig | None, conn: Connection) -> None:
    """The worker process's entry point: load the engine, say `Ready` (or why not), then step until told
    to stop or until the server's side of the pipe closes."""
    import torch

    from gemma_runtime.engine.llm_engine import LLMEngine

    # Ctrl+C reaches the whole process group: the server's process drains and then stops this one, which
    # must not die first (its streams would end with an error) nor print a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = cpu_threads((config or RuntimeConfig()).device, dict(os.environ), cores)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        engine = LLMEngine(engine_dir, config)
    except BaseException as exc:  # noqa: BLE001  told to the server's side, which raises it there
        conn.send(portable(exc) if isinstance(exc, Exception) else RuntimeError(repr(exc)))
        return
    conn.send(Ready(engine.max_model_len, engine.config, engine.stats(), torch.get_num_threads()))
    try:
        _Worker(engine, conn).run()
    except (BrokenPipeError, EOFError, ConnectionResetError):
        pass  # the server's process went away
    finally:
        engine.close()
