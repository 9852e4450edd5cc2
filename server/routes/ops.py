"""Health (NIM paths and /health) and Prometheus metrics. These stay open when an API key is set."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from server.errors import APIError, error_response
from server.metrics import CONTENT_TYPE

router = APIRouter()


def _ready(request: Request) -> JSONResponse:
    ctx = request.app.state.ctx
    if ctx.admission is not None and ctx.admission.draining:  # SIGTERM: leave the load balancer's pool at once
        return error_response(APIError("The server is draining (shutting down)", 503, code="draining"))
    backend = ctx.backend
    try:
        ok = backend.health()
    except Exception:
        ok = False
    if not ok:
        return error_response(APIError("The engine is not ready", 503, code="not_ready"))
    return JSONResponse({"object": "health.response", "message": "Service is ready.", "status": "ready"})


@router.get("/v1/health/ready")
async def health_ready(request: Request):
    return _ready(request)


@router.get("/health")
async def health(request: Request):
    return _ready(request)


@router.get("/v1/health/live")
async def health_live():
    return {"object": "health.response", "message": "Service is live.", "status": "live"}


@router.get("/metrics")
@router.get("/v1/metrics")
async def metrics(request: Request):
    return Response(request.app.state.ctx.metrics.render(), media_type=CONTENT_TYPE)
