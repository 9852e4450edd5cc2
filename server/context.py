"""What request handlers share, built once at startup by the app factory: the backend, the settings,
the served name, the length limits, token texts, the image policy, the metrics, the per-request caps,
the prompt workers and admission control."""

from __future__ import annotations

from dataclasses import dataclass

from server.admission import Admission
from server.images import ImageFetchPolicy
from server.limits import RequestGuard
from server.logprobs import TokenText
from server.metrics import ServerMetrics
from server.prompt_work import PromptWorkers
from server.settings import ServerSettings


@dataclass(frozen=True)
class Limits:
    max_model_len: int
    image_tokens: int  # an upper bound of the prompt tokens one image becomes


@dataclass(frozen=True)
class ServerContext:
    """What request handlers share: built once at startup by the app factory."""

    backend: object
    settings: ServerSettings
    model_name: str
    limits: Limits
    token_text: TokenText
    image_policy: ImageFetchPolicy
    metrics: ServerMetrics | None = None
    guard: RequestGuard | None = None  # per-request caps (server/limits.py)
    workers: PromptWorkers | None = None  # rendering and tokenizing off the loop (server/prompt_work.py)
    admission: Admission | None = None  # requests in flight, draining (server/admission.py)
