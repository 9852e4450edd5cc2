"""The OpenAPI document says what the server answers: FastAPI lists 422 for a body that fails
validation, but server/errors.py answers 400 (as OpenAI does), and every error is the OpenAI
envelope (404 for an unknown model); the generation endpoints stream SSE when asked and may also
answer 413 (body cap), 503 (overload, draining) and 504 (--request-timeout). Fuzzers (schemathesis)
check responses against this document."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_ERROR_REF = {"$ref": "#/components/schemas/OpenAIError"}
_PROMETHEUS_PATHS = ("/metrics", "/v1/metrics")
_GENERATION_ERRORS = {
    "413": "Request body too large",
    "503": "Overloaded or draining (see Retry-After)",
    "504": "Request timeout",
}


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
            doc.setdefault("components", {}).setdefault("schemas", {})["OpenAIError"] = ERROR_SCHEMA
            for path, item in doc.get("paths", {}).items():
                for method, op in item.items():
                    responses = op.setdefault("responses", {})
                    if path in _PROMETHEUS_PATHS:
                        responses["200"] = {
                            "description": "Prometheus metrics",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    if responses.pop("422", None) is not None or method == "post":
                        responses["400"] = _error("Invalid request")
                    responses.setdefault("404", _error("Unknown model"))
                    if method == "post":
                        responses.update({code: _error(text) for code, text in _GENERATION_ERRORS.items()})
                        ok = responses.get("200", {}).setdefault("content", {})
                        ok.setdefault("text/event-stream", {"schema": {"type": "string"}})  # stream: true
            for name in ("HTTPValidationError", "ValidationError"):
                doc["components"]["schemas"].pop(name, None)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi
