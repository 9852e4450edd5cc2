"""The translator's Triton client: the same generate/abort/stats/health surface as the embedded
AsyncEngine, served by the gemma4 model of a running tritonserver over gRPC streaming.

- One `ModelStreamInfer` call per request (asyncio, `tritonclient.grpc.aio`): cancelling that call is
  how Triton learns a request was abandoned (a multiplexed stream can only be cancelled as a whole).
- The engine's spec, tokenizer and generation defaults come from a local engine directory: the one
  given, else the one the launcher recorded in the model config's `engine_dir` parameter.
- A monitor thread polls model readiness and the runtime's gauges on Triton's metrics port, so
  `health()` and `stats()` answer instantly and follow Triton going down and coming back.
- Errors: bad requests raise `RequestError` (HTTP 400) as the embedded engine does; Triton being
  unreachable raises `TritonUnavailable`, a `ConnectionError` (HTTP 503).
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from gemma_runtime.api import EngineStats, GenerateRequest, RequestError, RequestOutput
from gemma_runtime.engine_format.files import ENGINE_JSON
from gemma_runtime.engine_format.spec import EngineSpec, read_generation_defaults
from triton_bridge import protocol

# Reconnect quickly after Triton restarts (gRPC's default backoff grows to two minutes), and keep the
# message limits tritonclient sets when it builds the channel itself.
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class TritonUnavailable(ConnectionError):
    """Triton cannot be reached or dropped the stream: the translator answers 503."""


def load_engine_files(engine_dir: str | Path) -> tuple[EngineSpec, object, dict]:
    """(spec, tokenizer, generation defaults) from an engine directory, as the runtime reads them."""
    from transformers import PreTrainedTokenizerFast

    engine_dir = Path(engine_dir)
    spec = EngineSpec.load(engine_dir)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(engine_dir))
    return spec, tokenizer, read_generation_defaults(engine_dir)


def parse_uri(uri: str) -> tuple[str, str, str]:
    """`triton://HOST:PORT[/MODEL][?metrics_port=N]` -> (grpc url, model name, metrics url).
    The metrics port defaults to the gRPC port + 1 (Triton's 8001/8002, our 8011/8012)."""
    parts = urlsplit(uri)
    if parts.scheme != "triton" or not parts.hostname or not parts.port:
        raise ValueError(f"expected triton://HOST:PORT, got {uri!r}")
    model = parts.path.strip("/") or protocol.MODEL_NAME
    query = parse_qs(parts.query)
    metrics_port = int(query.get("metrics_port", [parts.port + 1])[0])
    return f"{parts.hostname}:{parts.port}", model, f"http://{parts.hostname}:{metrics_port}/metrics"


class TritonBackend:
    def __init__(
        self,
        url: str,
        engine_dir: str | Path,
        *,
        model_name: str = protocol.MODEL_NAME,
        metrics_url: str | None = None,
        poll_interval: float = 0.5,
    ):
        self.url = url
        self.model_name = model_name
        self.metrics_url = metrics_url or f"http://{url.rsplit(':', 1)[0]}:{int(url.rsplit(':', 1)[1]) + 1}/metrics"
        self.engine_dir = Path(engine_dir)
        self.spec, self.tokenizer, self.generation_defaults = load_engine_files(engine_dir)
        self.max_model_len = self.spec.max_model_len
        self.poll_interval = poll_interval
        self._healthy = False
        self._stats = EngineStats(0, 0, 0, 0)
        self._calls: dict[str, object] = {}  # request_id -> its ModelStreamInfer call
        self._aborted: set[str] = set()
        self._aio: tuple[asyncio.AbstractEventLoop, aioclient.InferenceServerClient] | None = None
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._sync = grpcclient.InferenceServerClient(url, channel_args=_CHANNEL_ARGS)

    @classmethod
    def from_uri(cls, uri: str, engine_dir: str | Path | None = None, discover_timeout: float = 30.0) -> TritonBackend:
        url, model, metrics_url = parse_uri(uri)
        if engine_dir is None:
            engine_dir = discover_engine_dir(url, model, discover_timeout)
        return cls(url, engine_dir, model_name=model, metrics_url=metrics_url)

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._monitor is None:
            self.refresh()
            self._stop.clear()
            self._monitor = threading.Thread(target=self._monitor_loop, name="triton-monitor", daemon=True)
            self._monitor.start()

    def shutdown(self) -> None:
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=5)
            self._monitor = None
        for call in list(self._calls.values()):
            call.cancel()
        if self._aio is not None:
            loop, client = self._aio
            self._aio = None
            if loop.is_running():  # possibly this very thread (a lifespan hook): schedule, don't wait
                asyncio.run_coroutine_threadsafe(client.close(), loop)
            elif not loop.is_closed():
                loop.run_until_complete(client.close())
        self._sync.close()

    def health(self) -> bool:
        return self._healthy

    def stats(self) -> EngineStats:
        return self._stats

    def refresh(self) -> None:
        """One readiness and stats poll (the monitor thread calls this every poll_interval)."""
        try:
            self._healthy = bool(self._sync.is_model_ready(self.model_name, client_timeout=2))
        except InferenceServerException:
            self._healthy = False
        if not self._healthy:
            return
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=2) as r:
                found = protocol.parse_stats_metrics(r.read().decode())
            if len(found) == len(protocol.STATS_METRICS):
                self._stats = EngineStats(**{k: int(v) for k, v in found.items()})
        except OSError:
            pass  # metrics are best effort: health comes from gRPC readiness

    def _monitor_loop(self) -> None:
        while not self._stop.wait(self.poll_interval):
            self.refresh()

    # --- requests ----------------------------------------------------------------------------------

    def _client(self) -> aioclient.InferenceServerClient:
        # grpc.aio channels belong to the event loop that made them.
        loop = asyncio.get_running_loop()
        if self._aio is None or self._aio[0] is not loop:
            self._aio = (loop, aioclient.InferenceServerClient(self.url, channel_args=_CHANNEL_ARGS))
        return self._aio[1]

    async def generate(self, request: GenerateRequest) -> AsyncIterator[RequestOutput]:
        """Streams the request's outputs; the last has finished=True. Raises RequestError for a bad
        request and TritonUnavailable when Triton cannot be reached or drops the stream."""
        rid = request.request_id
        if rid in self._calls:
            raise RequestError(f"request id {rid!r} is already in flight")
        inputs = numpy_inputs_to_grpc(protocol.encode_request(request))

        async def one_request():
            yield {"model_name": self.model_name, "inputs": inputs, "request_id": rid}

        call = self._client().stream_infer(one_request())
        self._calls[rid] = call
        finished = False
        try:
            async for result, error in call:
                if error is not None:
                    finished = True
                    raise _request_error(error.message())
                response = result.get_response()
                final = response.parameters["triton_final_response"].bool_param
                out = protocol.decode_output(rid, result.as_numpy, final)
                finished = out.finished
                yield out
                if finished:
                    return
            if rid in self._aborted:
                finished = True
                yield _aborted(rid)
                return
            raise TritonUnavailable(f"Triton ended the stream of {rid!r} before its final response")
        except asyncio.CancelledError:
            if rid not in self._aborted:
                raise  # our caller was cancelled, not the call
            finished = True
            yield _aborted(rid)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED and rid in self._aborted:
                finished = True
                yield _aborted(rid)
                return
            self._healthy = self._healthy and e.code() != grpc.StatusCode.UNAVAILABLE
            raise TritonUnavailable(f"Triton at {self.url} is unavailable: {e.code().name}: {e.details()}") from e
        finally:
            self._calls.pop(rid, None)
            self._aborted.discard(rid)
            if not finished:
                call.cancel()  # the consumer left early: Triton cancels the request, the runtime aborts it

    async def abort(self, request_id: str) -> None:
        call = self._calls.get(request_id)
        if call is not None:
            self._aborted.add(request_id)
            call.cancel()


_INPUT_SPECS = {s.name: s for s in protocol.INPUTS}


def _aborted(request_id: str) -> RequestOutput:
    return RequestOutput(request_id, (), "", finished=True, finish_reason="abort")


def _request_error(message: str) -> Exception:
    if message.startswith(protocol.INVALID_REQUEST_PREFIX):
        return RequestError(message[len(protocol.INVALID_REQUEST_PREFIX) :])
    if message.startswith(protocol.OVERLOADED_PREFIX):
        return TritonUnavailable(message)  # a ConnectionError: 503 with Retry-After
    return RuntimeError(message)


def discover_engine_dir(url: str, model: str = protocol.MODEL_NAME, timeout: float = 30.0) -> Path:
    """The engine directory the launcher set in the model's config (it must exist on this machine: the
    translator reads the tokenizer and chat template from it)."""
    client = grpcclient.InferenceServerClient(url, channel_args=_CHANNEL_ARGS)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                config = client.get_model_config(model, as_json=True, client_timeout=2)["config"]
                break
            except InferenceServerException as e:
                if time.monotonic() > deadline:
                    raise TritonUnavailable(f"cannot read {model}'s config from Triton at {url}: {e.message()}") from e
                time.sleep(0.5)
    finally:
        client.close()
    path = config.get("parameters", {}).get("engine_dir", {}).get("string_value", "")
    if not path or not (Path(path) / ENGINE_JSON).is_file():
        raise SystemExit(
            f"Triton's {model} does not name an engine directory on this machine ({path or 'none set'}): "
            f"pass --engine with a local copy of the engine (the translator needs its tokenizer and chat template)"
        )
    return Path(path)


def numpy_inputs_to_grpc(tensors: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    """InferInputs for the sync tritonclient (tests and scripts)."""
    out = []
    for name, array in tensors.items():
        tensor = grpcclient.InferInput(name, list(array.shape), _INPUT_SPECS[name].datatype)
        tensor.set_data_from_numpy(array)
        out.append(tensor)
    return out
