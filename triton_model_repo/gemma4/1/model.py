"""Triton Python backend adapter: the gemma4 model is our runtime's AsyncEngine behind Triton's
decoupled protocol. The adapter only translates; batching, KV cache and sampling live in the runtime.

Threads (the stub's own thread calls `execute` and must never wait on generation):
- the engine loop (AsyncEngine's own thread) steps the batch;
- an asyncio loop thread runs one task per request, iterating `engine.generate()`;
- a sender thread does the blocking `response_sender.send` calls, so neither the asyncio loop nor the
  engine ever waits on Triton's IPC; one FIFO keeps each request's responses in order;
- a watcher thread polls `request.is_cancelled()` (Triton has no cancellation callback for the Python
  backend) and publishes EngineStats as Prometheus gauges on Triton's metrics port;
- a shutdown thread asks tritonserver whether the model is still ready and drains the live requests once
  the server exits or unloads it (triton_bridge/shutdown_watch.py: finalize alone would come too late).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import triton_python_backend_utils as pb_utils

WATCH_INTERVAL_S = 0.05


@dataclass
class _Live:
    """One Triton request in flight. Holding `request` keeps Triton's request object alive until the
    final response went out."""

    request: object
    sender: object
    runtime_id: str
    task: asyncio.Task | None = None  # set by _serve once it runs on the asyncio loop
    cancelled: bool = False
    ended_by_shutdown: bool = False  # cancelled by a drain running out of time, not by its client
    done: threading.Event = field(default_factory=threading.Event)
    # Triton frees a request's response factory once the final response is sent; asking
    # is_cancelled() after that crashes tritonserver (SIGSEGV in ResponseFactoryIsCancelled). The
    # sender thread sets `closed` under this lock as it sends the final; the watcher asks only before.
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False


def _parallel_params(params: dict) -> dict:
    """config.pbtxt's tensor_parallel_size and enable_expert_parallel (as the server's flags): this model
    process is rank 0 and spawns the other ranks (gemma_runtime/parallel/)."""
    out = {}
    size = params.get("tensor_parallel_size", "").strip()
    if size:
        if not size.isdigit() or int(size) < 1:
            raise pb_utils.TritonModelException(f"gemma4: tensor_parallel_size must be 1 or more, not {size!r}")
        out["tensor_parallel_size"] = int(size)
    expert = params.get("enable_expert_parallel", "").strip().lower()
    if expert not in ("", "true", "false"):
        raise pb_utils.TritonModelException(f"gemma4: enable_expert_parallel must be true or false, not {expert!r}")
    if expert:
        out["enable_expert_parallel"] = expert == "true"
    return out


class TritonPythonModel:
    # --- lifecycle ---------------------------------------------------------------------------------

    def initialize(self, args):
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("gemma4 must use the decoupled transaction policy (see config.pbtxt)")
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self._import_project(Path(args["model_repository"]))

        from gemma_runtime.engine.async_engine import AsyncEngine
        from triton_bridge import protocol

        self.protocol = protocol
        engine_dir = self._engine_dir(params, Path(args["model_repository"]))
        runtime_config = self._runtime_config(
            params.get("runtime_config") or "{}", params.get("enable_prefix_caching", ""), params
        )
        from gemma_runtime.speculative.registry import engine_has_drafter, missing_drafter_message

        if runtime_config.speculative == "mtp" and not engine_has_drafter(engine_dir):
            raise pb_utils.TritonModelException(f"gemma4: {missing_drafter_message(engine_dir)}")
        pb_utils.Logger.log_info(f"gemma4: loading engine {engine_dir} ({runtime_config})")
        self.engine = AsyncEngine.from_engine_dir(engine_dir, runtime_config)
        self.engine.start()
        # Overload (docs/operations.md): requests beyond the batch plus max_queued_requests are refused;
        # on unload, live requests get up to drain_timeout seconds before they are cancelled.
        self._capacity = runtime_config.max_num_seqs + int(params.get("max_queued_requests") or 256)
        self._drain_timeout = float(params.get("drain_timeout") or 30)

        self._ids = itertools.count()
        self._live: dict[str, _Live] = {}
        self._live_lock = threading.Lock()
        self._stopping = threading.Event()
        self._draining = threading.Event()  # tritonserver is exiting or unloading us: refuse new requests
        self._shutdown_watch = self._make_shutdown_watch(params, args)
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()

        self.loop = asyncio.new_event_loop()
        self._threads = [
            threading.Thread(target=self.loop.run_forever, name="gemma4-asyncio", daemon=True),
            threading.Thread(target=self._send_loop, name="gemma4-sender", daemon=True),
            threading.Thread(target=self._watch_loop, name="gemma4-watcher", daemon=True),
        ]
        if self._shutdown_watch is not None:
            run = self._shutdown_watch.run
            self._threads.append(
                threading.Thread(target=run, args=(self._stopping,), name="gemma4-shutdown", daemon=True)
            )
        # Metric families must outlive their metrics: keep both on self.
        self._families, self._gauges = self._make_gauges()
        for t in self._threads:
            t.start()
        pb_utils.Logger.log_info(f"gemma4: ready, engine {self.engine.spec.model_name} on {runtime_config.device}")

    def finalize(self):
        self._stopping.set()
        self._drain()
        self.engine.shutdown()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._outbox.put(None)
        for t in self._threads:
            t.join(timeout=5)
        self._gauges, self._families = {}, []

    @staticmethod
    def _import_project(model_dir: Path) -> None:
        # The stub runs the Python on PATH (the project's venv); an uninstalled checkout still works
        # because the repository root lies two levels above the model directory.
        root = model_dir.resolve().parent.parent
        if (root / "gemma_runtime").is_dir() and str(root) not in sys.path:
            sys.path.append(str(root))

    @staticmethod
    def _engine_dir(params: dict, model_dir: Path) -> Path:
        from gemma_runtime.engine_format.files import ENGINE_JSON
        from triton_bridge.protocol import ENGINE_PATH_FILE

        path = params.get("engine_dir", "").strip()
        source = "the engine_dir parameter"
        if not path or path.startswith("${"):
            file = model_dir / ENGINE_PATH_FILE
            if not file.is_file():
                raise pb_utils.TritonModelException(
                    f"gemma4: no engine given: set the engine_dir parameter in config.pbtxt or write the engine "
                    f"directory into {file} (`make triton ENGINE=engines/<name>` does this)"
                )
            path, source = file.read_text().strip(), str(file)
        engine_dir = Path(path)
        if not engine_dir.is_absolute():
            engine_dir = (model_dir / engine_dir).resolve()
        if not (engine_dir / ENGINE_JSON).is_file():
            raise pb_utils.TritonModelException(
                f"gemma4: {engine_dir} (from {source}) is not an engine directory: no engine.json "
                f"(build one with `make engine MODEL=...`)"
            )
        return engine_dir

    @staticmethod
    def _runtime_config(text: str, prefix_caching: str = "", params: dict | None = None):
        import torch

        from gemma_runtime.config import RuntimeConfig

        try:
            overrides = json.loads(text)
        except json.JSONDecodeError as e:
            raise pb_utils.TritonModelException(f"gemma4: runtime_config parameter is not JSON: {e}")
        overrides.setdefault("device", "cuda" if torch.cuda.is_available() else "cpu")
        switch = {"true": True, "false": False, "": None}.get(prefix_caching.strip().lower(), "bad")
        if switch == "bad":
            raise pb_utils.TritonModelException(
                f"gemma4: enable_prefix_caching must be true or false, not {prefix_caching!r}"
            )
        if switch is not None:
            overrides.setdefault("enable_prefix_caching", switch)
        from triton_bridge.spec_params import speculative_overrides

        try:
            defaults = speculative_overrides(params or {}) | _parallel_params(params or {})
        except ValueError as e:
            raise pb_utils.TritonModelException(f"gemma4: {e}")
        for key, value in defaults.items():  # the parameters' own keys; runtime_config's win
            overrides.setdefault(key, value)
        try:
            return RuntimeConfig(**overrides)
        except (TypeError, ValueError) as e:
            raise pb_utils.TritonModelException(f"gemma4: bad runtime_config {overrides}: {e}")

    # --- requests ----------------------------------------------------------------------------------

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            runtime_id = f"{request.request_id() or 'triton'}#{next(self._ids)}"
            try:
                greq = self.protocol.decode_request(runtime_id, lambda n, r=request: _input(r, n))
            except (ValueError, TypeError) as e:
                self._outbox.put(
                    (None, sender, _error(self.protocol.INVALID_REQUEST_PREFIX + str(e), invalid=True), True)
                )
                continue
            with self._live_lock:
                stopping = self._stopping.is_set() or self._draining.is_set()
                refused = stopping or len(self._live) >= self._capacity
            if refused:
                why = "the model is unloading" if stopping else f"{self._capacity} requests are in flight"
                self._outbox.put((None, sender, _error(f"{self.protocol.OVERLOADED_PREFIX}{why}"), True))
                continue
            item = _Live(request, sender, runtime_id)
            with self._live_lock:
                self._live[runtime_id] = item
            asyncio.run_coroutine_threadsafe(self._serve(item, greq), self.loop)
        return None  # decoupled: every response goes through the senders

    async def _serve(self, item: _Live, greq) -> None:
        from gemma_runtime.api import RequestError, RequestOutput

        item.task = asyncio.current_task()
        final_sent = False
        try:
            if item.cancelled:  # cancelled before this task first ran: cancelling it then skips this body
                raise asyncio.CancelledError
            async for out in self.engine.generate(greq):
                final_sent = out.finished
                if out.finish_reason == "error":  # a runtime failure ends the stream as a Triton error
                    self._outbox.put(
                        (item, item.sender, _error(self.protocol.ENGINE_ERROR_PREFIX + (out.error or "failed")), True)
                    )
                    break
                self._outbox.put((item, item.sender, self._response(out), out.finished))
                if out.finished:
                    break
        except asyncio.CancelledError:
            # Triton (or a drain) cancelled the request: leaving generate() aborted it in the runtime (its
            # blocks are free); tell whoever still listens how it ended.
            if item.ended_by_shutdown:
                why = f"the server is shutting down and this request did not finish within {self._drain_timeout:g} s"
                self._outbox.put((item, item.sender, _error(self.protocol.OVERLOADED_PREFIX + why), True))
            else:
                abort = RequestOutput(greq.request_id, (), "", finished=True, finish_reason="abort")
                self._outbox.put((item, item.sender, self._response(abort), True))
            final_sent = True
        except RequestError as e:
            self._outbox.put(
                (item, item.sender, _error(self.protocol.INVALID_REQUEST_PREFIX + str(e), invalid=True), True)
            )
            final_sent = True
        except Exception as e:  # noqa: BLE001  any failure must end the stream with a readable error
            pb_utils.Logger.log_error(f"gemma4: request {greq.request_id} failed: {traceback.format_exc()}")
            self._outbox.put(
                (item, item.sender, _error(f"{self.protocol.ENGINE_ERROR_PREFIX}{type(e).__name__}: {e}"), True)
            )
            final_sent = True
        finally:
            if not final_sent:
                self._outbox.put(
                    (
                        item,
                        item.sender,
                        _error(self.protocol.ENGINE_ERROR_PREFIX + "stream ended without a final output"),
                        True,
                    )
                )
            with self._live_lock:
                self._live.pop(item.runtime_id, None)
            item.done.set()

    def _response(self, out):
        tensors = self.protocol.encode_output(out)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in tensors.items()])

    def _cancel(self, item: _Live) -> None:
        if not item.cancelled:
            item.cancelled = True
            self.loop.call_soon_threadsafe(self._cancel_on_loop, item)

    @staticmethod
    def _cancel_on_loop(item: _Live) -> None:
        # On the loop thread, so `task` is either set (cancel it) or _serve has yet to start (and will
        # see `cancelled`).
        if item.task is not None:
            item.task.cancel()

    def _make_shutdown_watch(self, params: dict, args: dict):
        from triton_bridge.shutdown_watch import ShutdownWatch, model_ready_probe, server_http_url

        url = server_http_url(params)
        if url is None:
            pb_utils.Logger.log_warn(
                "gemma4: tritonserver's HTTP endpoint is off, so a SIGTERM cannot drain live streams (they end "
                "when --exit-timeout-secs runs out); set the server_http_url parameter to a reachable endpoint"
            )
            return None
        probe = model_ready_probe(url, args["model_name"], args.get("model_version", ""))
        return ShutdownWatch(probe, self._begin_drain)

    def _begin_drain(self, why: str) -> None:
        """Tritonserver is exiting (or unloading this model) while requests may be live: it finalizes a
        decoupled model only once they end (triton_bridge/shutdown_watch.py), so drain them now."""
        self._draining.set()
        pb_utils.Logger.log_info(
            f"gemma4: {why}: draining {len(self._live)} request(s), up to {self._drain_timeout:g} s"
        )
        threading.Thread(target=self._drain, name="gemma4-drain", daemon=True).start()

    def _drain(self) -> None:
        deadline = time.monotonic() + self._drain_timeout
        while self._live and time.monotonic() < deadline:  # let in-flight requests finish first
            time.sleep(0.05)
        with self._live_lock:
            live = list(self._live.values())
        for item in live:  # a server shutting down cancels what is still running
            item.ended_by_shutdown = not item.cancelled
            self._cancel(item)
        for item in live:
            item.done.wait(timeout=5)

    # --- helper threads ----------------------------------------------------------------------------

    def _send_loop(self) -> None:
        while True:
            msg = self._outbox.get()
            if msg is None:
                return
            item, sender, response, final = msg
            flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0
            guard = item.lock if item is not None and final else contextlib.nullcontext()
            with guard:
                try:
                    sender.send(response, flags=flags)
                except Exception as e:  # noqa: BLE001  the client may be gone; the request still gets aborted
                    pb_utils.Logger.log_warn(f"gemma4: sending a response failed: {e}")
                if item is not None and final:
                    item.closed = True

    def _watch_loop(self) -> None:
        last_stats = None
        while not self._stopping.wait(WATCH_INTERVAL_S):
            with self._live_lock:
                live = list(self._live.values())
            for item in live:
                with item.lock:
                    try:
                        cancelled = not item.closed and not item.cancelled and item.request.is_cancelled()
                    except Exception:  # noqa: BLE001  a request that just finished can no longer be asked
                        cancelled = False
                if cancelled:
                    self._cancel(item)
            stats = self.engine.stats()
            if stats != last_stats:
                for name, gauge in self._gauges.items():
                    gauge.set(float(getattr(stats, name)))
                last_stats = stats

    def _make_gauges(self):
        families, gauges = [], {}
        for attr, metric in self.protocol.STATS_METRICS.items():
            family = pb_utils.MetricFamily(
                name=metric, description=f"gemma4 runtime {attr.replace('_', ' ')}", kind=pb_utils.MetricFamily.GAUGE
            )
            families.append(family)
            gauges[attr] = family.Metric(labels={"model": self.protocol.MODEL_NAME})
        return families, gauges


def _input(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _error(message: str, invalid: bool = False):
    code = pb_utils.TritonError.INVALID_ARG if invalid else pb_utils.TritonError.INTERNAL
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
