"""OpenAI error envelopes: one exception type carries status, type, param and code; handlers render it.

Every error the server returns, including 401/404/413 and FastAPI's own validation errors, uses
`{"error": {"message", "type", "param", "code"}}` because the OpenAI SDKs build their exceptions from
that object (`body.get("error", body)`) and some SDKs drop non-envelope bodies entirely.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

# HTTP status -> OpenAI error `type` vocabulary.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}

# Bound what a validation error echoes back: pydantic messages can quote the whole (huge) input.
_MAX_ERRORS = 10
_MAX_ERROR_CHARS = 200


@dataclass
class APIError(Exception):
    message: str
    status_code: int = 400
    param: str | None = None
    code: str | None = None
    type: str | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def to_dict(self) -> dict:
        return error_body(self.message, self.status_code, self.param, self.code, self.type)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(message, 400, param=param, code=code)


def error_body(
    message: str, status_code: int, param: str | None = None, code: str | None = None, type: str | None = None
) -> dict:
    return {
        "error": {
            "message": message,
            "type": type or ERROR_TYPES.get(status_code, "server_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(err: APIError) -> JSONResponse:
    headers = {"Retry-After": "1"} if err.status_code == 503 else None
    return JSONResponse(err.to_dict(), status_code=err.status_code, headers=headers)


def sse_error_event(err: APIError) -> str:
    """An error after the stream's 200 went out: an SSE data event (the SDK raises APIError on it)."""
    return f"data: {json.dumps(err.to_dict())}\n\n"


def _loc_to_param(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or None


def validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    lines = []
    for e in errors[:_MAX_ERRORS]:
        where = _loc_to_param(tuple(e.get("loc", ()))) or "body"
        lines.append(f"{where}: {e.get('msg', 'invalid')}"[:_MAX_ERROR_CHARS])
    if len(errors) > _MAX_ERRORS:
        lines.append(f"... and {len(errors) - _MAX_ERRORS} more errors")
    param = _loc_to_param(tuple(errors[0].get("loc", ()))) if errors else None
    return APIError("Invalid request: " + "; ".join(lines), 400, param=param)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI answers 422 by default; OpenAI clients and peers (vLLM, SGLang) expect 400.
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(APIError(str(exc.detail), exc.status_code))

    @app.exception_handler(ConnectionError)
    async def _unavailable(_: Request, exc: ConnectionError) -> JSONResponse:
        # The backend (a Triton server) is unreachable: a retryable 503, not a server bug.
        return error_response(APIError(f"the model backend is unavailable: {exc}", 503, code="backend_unavailable"))

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        return error_response(APIError(f"Internal server error: {type(exc).__name__}", 500))
