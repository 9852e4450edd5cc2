"""/v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.body_route import OffloadedBodyRoute
from server.chat import chat_completion, chat_stream, prepare_chat
from server.completions import completion, completion_stream, prepare_completion
from server.context import ServerContext
from server.errors import APIError
from server.prompt_work import offload
from server.protocol import ChatCompletionRequest, CompletionRequest
from server.sse import SSEResponse
from server.streams import start_all, until_disconnect

router = APIRouter(route_class=OffloadedBodyRoute)  # large bodies parsed off the loop


def _ctx(request: Request) -> ServerContext:
    return request.app.state.ctx


def check_model(ctx: ServerContext, model: str | None) -> None:
    if model is not None and model not in (ctx.model_name, ctx.backend.spec.model_name, *ctx.settings.model_aliases):
        raise APIError(f"The model `{model}` does not exist.", 404, param="model", code="model_not_found")


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    ctx = _ctx(request)
    check_model(ctx, body.model)
    plan = await prepare_chat(ctx, body)
    if body.stream:
        # Primed while watching the client: a stream whose client left while queued is never run.
        streams = await until_disconnect(request, start_all(ctx.backend, plan.runtime_requests()))
        return SSEResponse(chat_stream(ctx, body, plan, streams))
    return JSONResponse(await until_disconnect(request, chat_completion(ctx, body, plan)))


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request):
    ctx = _ctx(request)
    check_model(ctx, body.model)
    if ctx.guard is not None:
        ctx.guard.check_completion(body)
    plan = await offload(ctx.workers, prepare_completion, ctx, body)
    if body.stream:
        streams = await until_disconnect(request, start_all(ctx.backend, list(plan.requests)))
        return SSEResponse(completion_stream(ctx, body, plan, streams))
    return JSONResponse(await until_disconnect(request, completion(ctx, body, plan)))


@router.get("/v1/models")
async def list_models(request: Request):
    ctx = _ctx(request)
    return {
        "object": "list",
        "data": [_model_card(ctx, request, name) for name in (ctx.model_name, *ctx.settings.model_aliases)],
    }


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request):
    ctx = _ctx(request)
    check_model(ctx, model_id)
    return _model_card(ctx, request, model_id)


def _model_card(ctx: ServerContext, request: Request, name: str) -> dict:
    return {
        "id": name,
        "object": "model",
        "created": request.app.state.started_at,
        "owned_by": "google",
        "root": ctx.backend.spec.model_name,
        "parent": None,
        "max_model_len": ctx.limits.max_model_len,
    }
