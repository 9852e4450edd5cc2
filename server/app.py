"""The FastAPI app factory: wires settings, a Backend, metrics, middleware and routes."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server.admission import Admission, AdmissionConfig, AdmissionMiddleware, engine_batch
from server.context import Limits, ServerContext
from server.errors import install_error_handlers
from server.fault_barrier import FaultBarrier
from server.heap import freeze_startup_heap
from server.images import ImageFetchPolicy
from server.limits import RequestGuard, body_cap_bytes
from server.logprobs import TokenText
from server.metrics import ServerMetrics
from server.middleware import GatewayMiddleware
from server.openapi_doc import install_openapi
from server.prompt_work import PromptWorkers
from server.responses.store import ResponseStore, StoreConfig
from server.routes import openai as openai_routes
from server.routes import ops as ops_routes
from server.routes import responses as responses_routes
from server.settings import ServerSettings


def image_policy(settings: ServerSettings) -> ImageFetchPolicy:
    return ImageFetchPolicy(
        timeout_s=settings.image_fetch_timeout_s,
        max_bytes=settings.image_max_bytes,
        max_pixels=settings.image_max_pixels,
        allow_private_addresses=settings.allow_local_image_urls,
    )


def build_context(settings: ServerSettings, backend) -> ServerContext:
    spec = backend.spec
    model_name = settings.served_model_name or spec.model_name
    # An image becomes at most the runtime's soft-token budget plus its <|image> / <image|> markers.
    soft_tokens = getattr(backend, "image_soft_tokens", None) or (
        spec.vision.default_output_length if spec.vision else 0
    )
    image_tokens = soft_tokens + 2 if spec.vision is not None else 0
    max_model_len = getattr(backend, "max_model_len", None) or spec.max_model_len
    metrics = ServerMetrics(backend, model_name)
    capacity = engine_batch(backend) + settings.max_queued_requests
    return ServerContext(
        backend=backend,
        settings=settings,
        model_name=model_name,
        limits=Limits(max_model_len=max_model_len, image_tokens=image_tokens),
        token_text=TokenText(backend.tokenizer),
        image_policy=image_policy(settings),
        metrics=metrics,
        guard=RequestGuard.build(settings, backend.tokenizer, max_model_len, image_tokens, spec.text.vocab_size),
        workers=PromptWorkers(),
        admission=Admission(AdmissionConfig(capacity, settings.request_timeout_s), metrics.registry, model_name),
    )


def body_cap(settings: ServerSettings, ctx: ServerContext) -> int:
    """GEMMA_MAX_REQUEST_BYTES when set, else what the largest request that could fit needs."""
    if settings.max_request_bytes is not None:
        return settings.max_request_bytes
    images = settings.max_images_per_prompt if ctx.backend.spec.vision is not None else 0
    return body_cap_bytes(ctx.limits.max_model_len, ctx.guard.token_chars, images, settings.image_max_bytes)


def create_app(settings: ServerSettings, backend, *, manage_backend: bool = True) -> FastAPI:
    """`manage_backend`: start the backend with the app and shut it down after (the embedded default)."""
    ctx = build_context(settings, backend)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if manage_backend:
            backend.start()
        freeze_startup_heap()  # full collections stop walking the engine's objects (server/heap.py)
        try:
            yield
        finally:
            ctx.workers.shutdown()
            if manage_backend:
                backend.shutdown()

    app = FastAPI(title="Gemma 4 OpenAI-compatible server", lifespan=lifespan)
    app.state.ctx = ctx
    app.state.started_at = int(time.time())
    app.state.response_store = ResponseStore(StoreConfig(settings.responses_max_stored, settings.responses_ttl_s))
    install_error_handlers(app)
    install_openapi(app)  # 400 (not 422) and the OpenAI error envelope in /openapi.json
    app.include_router(openai_routes.router)
    app.include_router(responses_routes.router)
    app.include_router(ops_routes.router)
    app.add_middleware(AdmissionMiddleware, admission=ctx.admission)  # innermost: counts only what passed the gateway
    app.add_middleware(FaultBarrier)
    app.add_middleware(
        GatewayMiddleware,
        api_key=settings.api_key,
        max_body_bytes=body_cap(settings, ctx),
        metrics=ctx.metrics,
        key_scope=settings.api_key_scope,
    )
    return app
