"""Pure ASGI middleware (no BaseHTTPMiddleware: it breaks streaming disconnect handling):
API-key check, request-body size limit, and request counting by status for /metrics."""

from __future__ import annotations

import json
import secrets

from server.errors import APIError
from server.fault_barrier import was_disconnected
from server.key_scope import needs_key

# Paths counted by their own label; anything else is "other" (bounded label cardinality).
COUNTED_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/models")


async def _send_error(send, err: APIError) -> None:
    body = json.dumps(err.to_dict()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": err.status_code,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class GatewayMiddleware:
    def __init__(self, app, *, api_key: str | None, max_body_bytes: int, metrics=None, key_scope: str = "api") -> None:
        self.app = app
        self.api_key = api_key
        self.key_scope = key_scope
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        value = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = value.partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), self.api_key.encode())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in COUNTED_PATHS else "other"
        status = {"code": 500}

        async def counting_send(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, counting_send, path)
        finally:
            if self.metrics is not None and path.startswith("/v1/"):
                self.metrics.count(endpoint, 499 if was_disconnected(scope) else status["code"])

    async def _handle(self, scope, receive, send, path: str) -> None:
        headers = dict(scope.get("headers") or ())
        if self.api_key and needs_key(path, self.key_scope) and not self._authorized(headers):
            await _drain(receive)
            return await _send_error(send, APIError("Incorrect API key provided.", 401, code="invalid_api_key"))
        length = headers.get(b"content-length")
        if length is not None:
            if int(length) > self.max_body_bytes:
                await _drain(receive)
                return await _send_error(send, _too_large(self.max_body_bytes))
            return await self.app(scope, receive, send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        # A chunked body: read it here (bounded) and replay it to the app.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_body_bytes:
                if more:
                    await _drain(receive)
                return await _send_error(send, _too_large(self.max_body_bytes))
            chunks.append(chunk)
        replayed = {"done": False}

        async def replay():
            if not replayed["done"]:
                replayed["done"] = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _too_large(limit: int) -> APIError:
    return APIError(f"Request body too large: the limit is {limit} bytes.", 413, code="request_too_large")


async def _drain(receive) -> None:
    """Read (and drop) the rest of the body so the client sees the error instead of a reset."""
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return
        more = message.get("more_body", False)
