"""Large JSON bodies parsed and validated off the event loop.

FastAPI reads a body with `json.loads` and validates it with pydantic on the event loop: for a 30 MB
prompt that is most of a second (more on a loaded machine) during which no other request, stream or
health check is served. `OffloadedBodyRoute` does that work on the prompt workers (server/prompt_work.py)
for bodies of `LARGE_BODY_BYTES` or more: orjson parses them (json.loads where orjson refuses what
json.loads takes, such as NaN, or may have read an integer past 64 bits as a float: what a body means does
not change), pydantic validates them there, and FastAPI is handed the validated model, which it passes through without
validating again. Errors are the ones FastAPI raises itself (`RequestValidationError` with the same
locations), so every response keeps its status and shape. Small bodies take FastAPI's own path: a
thread hop costs more than parsing them.
"""

from __future__ import annotations

import email.message
import json

import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from server.prompt_work import offload

# Below this, parsing takes well under a millisecond: cheaper on the loop than a trip to a thread.
LARGE_BODY_BYTES = 256 * 1024


def _is_json(content_type: str | None) -> bool:
    """FastAPI's own test: no content type, or application/json or application/*+json."""
    if not content_type:
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


# orjson reads an integer beyond the 64-bit range as a float (json.loads keeps it an int, and the server
# answers such a seed with its own message): any float this large may have been such an integer.
_INT_RANGE = 2**63


def _may_hold_big_int(data) -> bool:
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, float):
            if abs(value) >= _INT_RANGE:
                return True
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def parse_json(body: bytes):
    """orjson first; json.loads decides whatever orjson refuses or may have read differently (the same
    value and the same error as FastAPI's path)."""
    try:
        data = orjson.loads(body)
        if not _may_hold_big_int(data):
            return data
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except json.JSONDecodeError as e:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", e.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": e.msg},
                }
            ]
        ) from None
    except Exception:  # noqa: BLE001 - not UTF-8, nested past the recursion limit...: FastAPI's own path
        return None  # answers these ("There was an error parsing the body"), and fails as fast as here


def parse_and_validate(body: bytes, model: type[BaseModel]) -> BaseModel | None:
    """The validated request, or None where FastAPI's own path should decide (it then reports the error)."""
    data = parse_json(body)
    if data is None:
        return None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors = [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
        raise RequestValidationError(errors) from None


class OffloadedBodyRoute(APIRoute):
    """An APIRoute whose large JSON bodies are parsed and validated on the app's prompt workers."""

    def get_route_handler(self):
        handler = super().get_route_handler()
        model = getattr(self.body_field, "field_info", None)
        model = getattr(model, "annotation", None)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return handler

        async def app(request: Request):
            body = await request.body()  # cached on the request: FastAPI's handler reads the same bytes
            if len(body) >= LARGE_BODY_BYTES and _is_json(request.headers.get("content-type")):
                workers = getattr(request.app.state.ctx, "workers", None)
                parsed = await offload(workers, parse_and_validate, body, model)
                if parsed is not None:
                    request._json = parsed  # Starlette's cache for request.json(): FastAPI takes it as is
            return await handler(request)

        return app
