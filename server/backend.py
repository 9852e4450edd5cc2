"""The seam between the HTTP translator and whatever generates tokens.

`Backend` is what the server needs: the engine's spec, tokenizer and default sampling, plus
generate/abort/stats/health. The embedded `AsyncEngine` (its engine loop on a thread, or with
`--engine-process` in a process of its own) is wrapped by `EmbeddedBackend`; a Triton
client (`triton://HOST:PORT`) registers its own factory under the "triton" scheme.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from gemma_runtime.api import EngineStats, GenerateRequest, RequestOutput
from gemma_runtime.engine_format.spec import EngineSpec


@runtime_checkable
class Backend(Protocol):
    spec: EngineSpec
    tokenizer: object  # transformers.PreTrainedTokenizerFast: .chat_template, apply_chat_template, encode/decode
    generation_defaults: dict
    max_model_len: int  # what the runtime serves (it may be set below spec.max_model_len)
    image_soft_tokens: int  # the runtime's default per-image soft-token budget

    def start(self) -> None: ...
    def shutdown(self) -> None: ...
    def generate(self, request: GenerateRequest) -> AsyncIterator[RequestOutput]: ...
    async def abort(self, request_id: str) -> None: ...
    def stats(self) -> EngineStats: ...
    def health(self) -> bool: ...


class EmbeddedBackend:
    """The runtime in this process (engine loop on its own thread)."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.spec = engine.spec
        self.tokenizer = engine.tokenizer
        self.generation_defaults = dict(getattr(engine, "generation_defaults", {}) or {})
        self.max_model_len = int(getattr(engine, "max_model_len", None) or self.spec.max_model_len)
        config = getattr(getattr(engine, "engine", None), "config", None)
        vision_default = self.spec.vision.default_output_length if self.spec.vision else 0
        self.image_soft_tokens = int(getattr(config, "default_image_soft_tokens", vision_default))
        self._started = False

    @classmethod
    def from_engine_dir(cls, engine_dir: str | Path, config=None, engine_process: bool = False) -> EmbeddedBackend:
        """`config`: a gemma_runtime.config.RuntimeConfig (None: the runtime's defaults). `engine_process`:
        the engine loop in a process of its own (gemma_runtime/engine/engine_process.py) rather than on a
        thread of this one."""
        if engine_process:
            from gemma_runtime.engine.engine_process import ProcessAsyncEngine

            return cls(ProcessAsyncEngine.from_engine_dir(engine_dir, config))
        from gemma_runtime.engine.async_engine import AsyncEngine

        return cls(AsyncEngine.from_engine_dir(engine_dir, config))

    def start(self) -> None:
        self.engine.start()
        self._started = True

    def shutdown(self) -> None:
        self.engine.shutdown()
        self._started = False

    def generate(self, request: GenerateRequest) -> AsyncIterator[RequestOutput]:
        return self.engine.generate(request)

    async def abort(self, request_id: str) -> None:
        await self.engine.abort(request_id)

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def health(self) -> bool:
        check = getattr(self.engine, "health", None)
        return bool(check()) if callable(check) else self._started


def _triton_factory(uri: str, engine_dir: str | None) -> Backend:
    # Reserved for the Triton client; it lives in its own module so this one never imports tritonclient.
    try:
        module = importlib.import_module("triton_bridge.client")
    except ModuleNotFoundError as e:
        raise SystemExit(f"--backend {uri}: the Triton client backend (triton_bridge/client.py) is not available: {e}")
    return module.TritonBackend.from_uri(uri, engine_dir=engine_dir)


# URI scheme -> factory(uri, engine_dir). The empty scheme is the embedded runtime.
BACKENDS: dict[str, Callable[[str, str | None], Backend]] = {
    "triton": _triton_factory,
}


def check_backend_choice(backend_uri: str | None, engine_dir: str | None) -> str:
    """The backend URI's scheme ("" for the embedded runtime); a one-line exit for an unknown scheme
    or for neither an engine nor a backend. Cheap: `python -m server` asks it before loading anything."""
    if backend_uri:
        scheme = backend_uri.split("://", 1)[0] if "://" in backend_uri else ""
        if scheme not in BACKENDS:
            raise SystemExit(f"unknown backend {backend_uri!r}; known schemes: {sorted(BACKENDS)}")
        return scheme
    if not engine_dir:
        raise SystemExit("give --engine DIR (an engine built by `make engine`) or --backend triton://HOST:PORT")
    return ""


def create_backend(
    backend_uri: str | None, engine_dir: str | None, runtime_config=None, engine_process: bool = False
) -> Backend:
    """runtime_config and engine_process: the embedded engine's (ignored with a backend URI)."""
    scheme = check_backend_choice(backend_uri, engine_dir)
    if scheme:
        return BACKENDS[scheme](backend_uri, engine_dir)
    return EmbeddedBackend.from_engine_dir(engine_dir, runtime_config, engine_process)
