"""The last line before uvicorn: an unexpected exception becomes a 500 envelope on a live connection,
and a client that left is neither an error nor a traceback.

Starlette's own 500 handler re-raises after answering, and uvicorn then closes the connection, so the
next request pipelined on it failed too. Here the exception is logged once and the response finished,
and the keep-alive connection stays usable. A client that disconnected (Starlette's ClientDisconnect, a
cancelled read) is logged at debug level and marked in the scope so /metrics counts it as 499 (the
status nginx uses for "client closed request"), not as a 400 or a 500.
"""

from __future__ import annotations

import logging

from starlette.requests import ClientDisconnect

from server.admission import send_error
from server.errors import APIError

log = logging.getLogger(__name__)

DISCONNECTED = "client_disconnected"  # scope["state"] key; server/middleware.py labels such requests 499


def mark_disconnected(scope) -> None:
    scope.setdefault("state", {})[DISCONNECTED] = True


def was_disconnected(scope) -> bool:
    return bool(scope.get("state", {}).get(DISCONNECTED))


class FaultBarrier:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watching_receive():
            message = await receive()
            if message["type"] == "http.disconnect":
                mark_disconnected(scope)
            return message

        async def tracking_send(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, watching_receive, tracking_send)
        except ClientDisconnect:
            mark_disconnected(scope)
            log.debug("client left %s before its response", scope.get("path"))
        except Exception as e:  # noqa: BLE001 - our bug: log it, answer it, keep the connection
            log.exception("unhandled error on %s", scope.get("path"))
            if not started:
                await send_error(send, APIError(f"Internal server error: {type(e).__name__}", 500))
            else:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
