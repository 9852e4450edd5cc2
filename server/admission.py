"""Admission control for the generation endpoints: a bound on requests in flight, a per-request
timeout, and the end of in-flight requests when a drain runs out of time (server/drain.py).

A pure ASGI middleware around POST /v1/chat/completions, /v1/completions and /v1/responses. A request
counts from its arrival (before its body is parsed, rendered or tokenized) until its response's last
byte. Beyond `capacity` (the engine's batch plus `--max-queued-requests`), and while draining, a new
request gets 503 with `Retry-After` in the OpenAI envelope, which the openai SDK retries.

Ending a request that is running (timeout, drain deadline) cancels its handler, which aborts its
runtime requests and frees their pages, then finishes the response in a form the client can read:
an error envelope when no byte went out yet, else, for a stream, an error event and `[DONE]`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from server.errors import APIError, sse_error_event

GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
RETRY_AFTER_S = 1
_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class AdmissionConfig:
    capacity: int  # requests in flight at most
    request_timeout_s: float | None = None


def engine_batch(backend) -> int:
    """The embedded engine's max_num_seqs (0 when the backend does not say, e.g. Triton)."""
    for path in (("max_num_seqs",), ("engine", "engine", "config", "max_num_seqs")):
        value = backend
        for name in path:
            value = getattr(value, name, None)
        if isinstance(value, int):
            return value
    return 0


def error_message(err: APIError) -> tuple[dict, bytes]:
    """The ASGI start message and body of an error envelope (503s carry Retry-After)."""
    body = json.dumps(err.to_dict()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if err.status_code == 503:
        headers += [(b"retry-after", str(RETRY_AFTER_S).encode()), (b"x-should-retry", b"true")]
    return {"type": "http.response.start", "status": err.status_code, "headers": headers}, body


async def send_error(send, err: APIError) -> None:
    start, body = error_message(err)
    await send(start)
    await send({"type": "http.response.body", "body": body})


class Flight:
    """One admitted request: its handler task and how far its response got."""

    def __init__(self) -> None:
        self.task: asyncio.Task | None = None
        self.started = False  # the status line went out
        self.sse = False
        self.finished = False  # the last body byte went out
        self.ended_by: APIError | None = None

    def end(self, err: APIError) -> None:
        """Cancel the handler; `run` then finishes the response with `err`."""
        if self.task is not None and not self.task.done() and self.ended_by is None:
            self.ended_by = err
            self.task.cancel()

    async def run(self, app, scope, receive, send, timeout_s: float | None) -> None:
        async def tracking_send(message) -> None:
            if message["type"] == "http.response.start":
                self.started = True
                self.sse = any(
                    k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                    for k, v in message.get("headers", ())
                )
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                self.finished = True
            await send(message)

        self.task = asyncio.ensure_future(app(scope, receive, tracking_send))
        timer = None
        if timeout_s:
            err = APIError(
                f"The request did not finish within the server's request timeout ({timeout_s:g} s).",
                504,
                code="request_timeout",
            )
            timer = asyncio.get_running_loop().call_later(timeout_s, self.end, err)
        try:
            await self.task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self.ended_by is None or (current is not None and current.cancelling()):
                raise  # cancelled from outside (server shutdown), not by `end`
            await self._finish(send, self.ended_by)
        finally:
            if timer is not None:
                timer.cancel()

    async def _finish(self, send, err: APIError) -> None:
        if self.finished:
            return
        if not self.started:
            return await send_error(send, err)
        tail = (sse_error_event(err).encode() + _DONE) if self.sse else b""
        await send({"type": "http.response.body", "body": tail, "more_body": False})


class Admission:
    """Requests in flight, the drain flag, and their metrics."""

    def __init__(self, config: AdmissionConfig, registry=None, model_name: str = "") -> None:
        self.config = config
        self.flights: set[Flight] = set()
        self.draining = False
        labels = {"model_name": model_name}
        self._rejected = Counter(
            "gemma_requests_rejected",
            "Generation requests refused at admission, by reason",
            ["model_name", "reason"],
            registry=registry,
        )
        self._rejected_labels = labels
        in_flight = Gauge(
            "gemma_num_requests_in_flight",
            "Generation requests admitted and not yet answered",
            ["model_name"],
            registry=registry,
        )
        in_flight.labels(**labels).set_function(lambda: len(self.flights))
        capacity = Gauge(
            "gemma_admission_capacity",
            "Generation requests admitted at most at once",
            ["model_name"],
            registry=registry,
        )
        capacity.labels(**labels).set(config.capacity)

    def refusal(self) -> APIError | None:
        if self.draining:
            self._reject("draining")
            return APIError(
                "The server is shutting down and takes no new requests; retry on another replica.", 503, code="draining"
            )
        if len(self.flights) >= self.config.capacity:
            self._reject("queue_full")
            return APIError(
                f"The server is overloaded: {len(self.flights)} requests are in flight, the most it admits "
                "(--max-queued-requests). Retry later.",
                503,
                code="overloaded",
            )
        return None

    def _reject(self, reason: str) -> None:
        self._rejected.labels(reason=reason, **self._rejected_labels).inc()

    def end_all(self, err: APIError) -> int:
        """End every request still in flight (the drain deadline); returns how many."""
        live = [f for f in self.flights if not f.finished]
        for f in live:
            f.end(err)
        return len(live)


class AdmissionMiddleware:
    def __init__(self, app, *, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in GENERATION_PATHS:
            return await self.app(scope, receive, send)
        refusal = self.admission.refusal()
        if refusal is not None:
            await _discard_body(receive)
            return await send_error(send, refusal)
        flight = Flight()
        self.admission.flights.add(flight)
        try:
            await flight.run(self.app, scope, receive, send, self.admission.config.request_timeout_s)
        finally:
            self.admission.flights.discard(flight)


async def _discard_body(receive) -> None:
    """Read the rest of the body so the client reads the 503 instead of a reset."""
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return
        more = message.get("more_body", False)
