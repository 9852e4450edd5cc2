"""ServerSettings: the one place that reads the environment, built once at startup (never at import)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ServerSettings:
    engine_dir: str | None = None
    backend: str | None = None  # None: the embedded runtime on engine_dir; "triton://HOST:PORT": a Triton server
    host: str = "0.0.0.0"
    port: int = 8000
    served_model_name: str | None = None  # None: the engine's model_name
    model_aliases: tuple[str, ...] = ()  # more model ids the server answers to (listed in /v1/models too)
    api_key: str | None = None
    api_key_scope: str = "api"  # "api": /v1 only; "all": /metrics and the API docs too (server/key_scope.py)
    max_images_per_prompt: int = 5
    image_fetch_timeout_s: float = 5.0
    image_max_bytes: int = 20 * 1024 * 1024
    image_max_pixels: int = 64 * 1024 * 1024
    allow_local_image_urls: bool = False  # loopback/private addresses refused unless set (tests serve their own images)
    max_request_bytes: int | None = None  # None: sized from max_model_len and the image limits (server/limits.py)
    reasoning_content_alias: bool = True  # also emit `reasoning_content` (SGLang/DeepSeek clients read that name)
    log_level: str = "info"
    # /v1/responses keeps stored responses in memory (server/responses/store.py): this many, this long
    responses_max_stored: int = 1024
    responses_ttl_s: float = 3600.0
    # Overload and shutdown (server/admission.py, server/drain.py; docs/operations.md).
    max_queued_requests: int = 256  # sequences admitted beyond the engine's batch; more get 503 + Retry-After
    drain_timeout_s: float = 30.0  # SIGTERM: how long in-flight requests may finish
    request_timeout_s: float | None = None  # a request still running after this long ends with a timeout error
    # An idle keep-alive connection is closed after this long. Longer than clients' own idle expiry (httpx,
    # hence the openai SDK: 5 s) and load balancers' (60 s), so they close first: a server that closes at the
    # same moment a client reuses the connection loses that request (measured: 4 of 7,000 under a burst at 5 s).
    timeout_keep_alive_s: int = 75
    # Per-request caps (server/limits.py): each refusal is a 400 naming its limit.
    max_stop_strings: int = 16
    max_stop_string_chars: int = 256
    max_sequences_per_request: int = 64  # prompts x n
    max_tools: int = 128
    max_tools_bytes: int = 256 * 1024  # the tools' JSON, all together
    max_logprobs: int = 20
    trust_request_chat_template: bool = False  # let chat_template_kwargs carry any key (a template included)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> ServerSettings:
        """Defaults, then environment variables, then explicit overrides (CLI flags that were given)."""
        env = os.environ if environ is None else environ
        from_env: dict = {}
        for name, (field, cast) in _ENV_VARS.items():
            if env.get(name) not in (None, ""):
                try:
                    from_env[field] = cast(env[name])
                except ValueError:
                    raise ValueError(f"{name}={env[name]!r} is not a valid {cast.__name__}") from None
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(cls(), **{**from_env, **given})


def _bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


# Environment variable -> (field, parser). NIM_* names are the NIM container's own.
_ENV_VARS = {
    "NIM_MAX_IMAGES_PER_PROMPT": ("max_images_per_prompt", int),
    "NIM_SERVED_MODEL_NAME": ("served_model_name", str),
    "GEMMA_SERVER_API_KEY": ("api_key", str),
    "GEMMA_API_KEY_SCOPE": ("api_key_scope", str),
    "GEMMA_IMAGE_FETCH_TIMEOUT": ("image_fetch_timeout_s", float),
    "GEMMA_IMAGE_MAX_BYTES": ("image_max_bytes", int),
    "GEMMA_IMAGE_MAX_PIXELS": ("image_max_pixels", int),
    "GEMMA_ALLOW_LOCAL_IMAGE_URLS": ("allow_local_image_urls", _bool),
    "GEMMA_MAX_REQUEST_BYTES": ("max_request_bytes", int),
    "GEMMA_RESPONSES_MAX_STORED": ("responses_max_stored", int),
    "GEMMA_RESPONSES_TTL_S": ("responses_ttl_s", float),
    "GEMMA_MAX_QUEUED_REQUESTS": ("max_queued_requests", int),
    "GEMMA_DRAIN_TIMEOUT": ("drain_timeout_s", float),
    "GEMMA_TIMEOUT_KEEP_ALIVE": ("timeout_keep_alive_s", int),
}
