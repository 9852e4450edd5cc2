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
    max_images_per_prompt: int = 5
    image_fetch_timeout_s: float = 5.0
    image_max_bytes: int = 20 * 1024 * 1024
    image_max_pixels: int = 64 * 1024 * 1024
    allow_local_image_urls: bool = False  # loopback/private addresses refused unless set (tests serve their own images)
    max_request_bytes: int = 64 * 1024 * 1024
    reasoning_content_alias: bool = True  # also emit `reasoning_content` (SGLang/DeepSeek clients read that name)
    log_level: str = "info"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> ServerSettings:
        """Defaults, then environment variables, then explicit overrides (CLI flags that were given)."""
        env = os.environ if environ is None else environ
        from_env: dict = {}
        for name, (field, cast) in _ENV_VARS.items():
            if env.get(name) not in (None, ""):
                from_env[field] = cast(env[name])
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(cls(), **{**from_env, **given})


def _bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


# Environment variable -> (field, parser). NIM_* names are the NIM container's own.
_ENV_VARS = {
    "NIM_MAX_IMAGES_PER_PROMPT": ("max_images_per_prompt", int),
    "NIM_SERVED_MODEL_NAME": ("served_model_name", str),
    "GEMMA_SERVER_API_KEY": ("api_key", str),
    "GEMMA_IMAGE_FETCH_TIMEOUT": ("image_fetch_timeout_s", float),
    "GEMMA_IMAGE_MAX_BYTES": ("image_max_bytes", int),
    "GEMMA_IMAGE_MAX_PIXELS": ("image_max_pixels", int),
    "GEMMA_ALLOW_LOCAL_IMAGE_URLS": ("allow_local_image_urls", _bool),
    "GEMMA_MAX_REQUEST_BYTES": ("max_request_bytes", int),
}
