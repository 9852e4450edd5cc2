"""/v1/responses: create (streaming or not), retrieve and delete stored responses."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.body_route import OffloadedBodyRoute
from server.errors import APIError
from server.responses.protocol import ResponsesRequest
from server.responses.service import prepare_response, response_events, run_to_end
from server.responses.store import ResponseStore
from server.routes.openai import check_model
from server.sse import SSEResponse
from server.streams import start_all, until_disconnect

router = APIRouter(route_class=OffloadedBodyRoute)  # large bodies parsed off the loop


def _store(request: Request) -> ResponseStore:
    return request.app.state.response_store


async def _sse(events):
    # Named events, as OpenAI sends them; no `[DONE]`: the terminal response event ends the stream.
    try:
        async for event in events:
            yield f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"
    finally:
        await events.aclose()  # a client gone mid-stream: abort the runtime request now, not at garbage collection


@router.post("/v1/responses")
async def create_response(body: ResponsesRequest, request: Request):
    ctx, store = request.app.state.ctx, _store(request)
    check_model(ctx, body.model)
    plan = await prepare_response(ctx, body, store)
    if body.stream:
        streams = await start_all(ctx.backend, plan.chat.runtime_requests())
        return SSEResponse(_sse(response_events(ctx, plan, streams, store)))
    return JSONResponse(await until_disconnect(request, run_to_end(ctx, plan, store)))


def _not_found(response_id: str) -> APIError:
    return APIError(
        f"Response with id '{response_id}' not found (never stored, deleted, or expired).",
        404,
        param="response_id",
        code="response_not_found",
    )


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str, request: Request):
    entry = _store(request).get(response_id)
    if entry is None:
        raise _not_found(response_id)
    return entry.response


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request):
    if not _store(request).delete(response_id):
        raise _not_found(response_id)
    return {"id": response_id, "object": "response.deleted", "deleted": True}
