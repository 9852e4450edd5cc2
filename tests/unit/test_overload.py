"""Admission, timeouts, drain and the fault barrier over real HTTP (uvicorn on 127.0.0.1) with a
scripted backend: 503 + Retry-After beyond the bound, a stream whose client left while queued never
runs, a 500 keeps the keep-alive connection, SIGTERM drains (server/admission.py, server/drain.py,
server/fault_barrier.py)."""

from __future__ import annotations

import http.client
import json
import logging
import signal
import socket
import threading
import time

import httpx
import uvicorn

from bench.uvicorn_thread import UvicornThread, free_port
from server.app import create_app
from server.drain import DrainingServer
from server.settings import ServerSettings

try:
    from ._server_fakes import FakeBackend, Script
except ImportError:
    from _server_fakes import FakeBackend, Script

USER = [{"role": "user", "content": "Hello"}]


def slow(n: int, delay_s: float) -> Script:
    return Script([f"w{i} " for i in range(n)], delay_s=delay_s)


def stream_events(base: str, body: dict, out: list, timeout: float = 30) -> None:
    """Collects a stream's SSE data payloads into `out` (run in a thread)."""
    with httpx.stream("POST", base + "/v1/chat/completions", json={**body, "stream": True}, timeout=timeout) as r:
        out.append(r.status_code)
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                out.append(data if data == "[DONE]" else json.loads(data))


def started(target, *args) -> threading.Thread:
    t = threading.Thread(target=target, args=args, daemon=True)
    t.start()
    return t


def wait_for(cond, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def metric(base: str, name: str, **labels) -> float:
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_overload_is_503_with_retry_after_and_nothing_lost():
    backend = FakeBackend(slow(100, 0.05))  # 5 s streams: still running when the third arrives
    with UvicornThread(create_app(ServerSettings(max_queued_requests=2), backend)) as srv:
        base = srv.base_url
        a, b = [], []
        threads = [
            started(stream_events, base, {"messages": USER}, a),
            started(stream_events, base, {"messages": USER}, b),
        ]
        wait_for(lambda: len(backend.requests) == 2)
        r = httpx.post(base + "/v1/chat/completions", json={"messages": USER})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "overloaded" and "--max-queued-requests" in r.json()["error"]["message"]
        assert httpx.get(base + "/v1/health/live").status_code == 200
        assert all(t.is_alive() for t in threads)  # refused while the admitted ones still run
        assert metric(base, "gemma_requests_rejected_total", reason="queue_full") == 1
        assert metric(base, "gemma_num_requests_in_flight") == 2
        for t in threads:
            t.join(timeout=30)
        for events in (a, b):  # the admitted ones are complete
            assert events[0] == 200 and events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "stop"
        assert (
            httpx.post(base + "/v1/chat/completions", json={"messages": USER, "max_tokens": 5}, timeout=30).status_code
            == 200
        )
        assert metric(base, "gemma_num_requests_in_flight") == 0


def test_500_keeps_the_connection_and_disconnects_are_not_errors(caplog):
    backend = FakeBackend(Script(["x"], error_after=0))
    with UvicornThread(create_app(ServerSettings(), backend)) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=json.dumps({"messages": USER}),
            headers={"content-type": "application/json"},
        )
        r = conn.getresponse()
        assert r.status == 500 and json.loads(r.read())["error"]["type"] == "server_error"
        conn.request("GET", "/v1/models")  # the same keep-alive connection
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["object"] == "list"
        conn.close()

        # A streaming request whose client leaves while it waits for its first token: aborted, never run on.
        backend.script = Script(["late"], delay_s=2.0)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            # a raw socket, closed once the backend holds the request: a client timeout instead could fire
            # before a loaded server has even read the request, which then never reaches the backend
            before = len(backend.requests)
            body = json.dumps({"messages": USER, "stream": True}).encode()
            head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            wait_for(lambda: len(backend.requests) == before + 1)
            sock.close()
            # By its id: the 500 above already left its own request in `aborted` (primed aborts a stream
            # whose first output failed), so a count of 1 held before this abort, and never after it.
            left = backend.requests[-1].request_id
            wait_for(lambda: left in backend.aborted)
            assert backend.finished == []
            wait_for(
                lambda: metric(srv.base_url, "gemma_requests_total", endpoint="/v1/chat/completions", status="499") == 1
            )
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
        assert metric(srv.base_url, "gemma_requests_total", endpoint="/v1/chat/completions", status="500") == 1


def test_request_timeout_ends_streams_readably():
    backend = FakeBackend(slow(100, 0.02))
    with UvicornThread(create_app(ServerSettings(request_timeout_s=0.3), backend)) as srv:
        events = []
        stream_events(srv.base_url, {"messages": USER}, events)
        assert events[0] == 200 and events[-1] == "[DONE]"
        assert events[-2]["error"]["code"] == "request_timeout"
        r = httpx.post(srv.base_url + "/v1/chat/completions", json={"messages": USER}, timeout=10)
        assert r.status_code == 504 and r.json()["error"]["code"] == "request_timeout"
        wait_for(lambda: len(backend.aborted) == 2)


class DrainingThread:
    def __init__(self, app, drain_timeout_s: float) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", timeout_graceful_shutdown=5)
        self.server = DrainingServer(config, app.state.ctx.admission, drain_timeout_s)
        self.thread = started(self.server.run)
        wait_for(lambda: self.server.started)
        self.base = f"http://127.0.0.1:{self.port}"


def test_sigterm_drains_then_ends_what_is_left():
    # 12 s streams: the context (256) caps a reply at ~236 tokens, which must outlast the 5 s drain with room
    backend = FakeBackend(slow(500, 0.05))
    shut = []
    backend.shutdown = lambda: shut.append(time.monotonic())
    srv = DrainingThread(create_app(ServerSettings(), backend), drain_timeout_s=5.0)
    short, long_ = [], []
    threads = [
        started(stream_events, srv.base, {"messages": USER, "max_tokens": 20}, short),
        started(stream_events, srv.base, {"messages": USER}, long_),
    ]
    wait_for(lambda: len(backend.requests) == 2)
    t0 = time.monotonic()
    srv.server.handle_exit(signal.SIGTERM, None)
    ready = httpx.get(srv.base + "/v1/health/ready")
    assert ready.status_code == 503 and ready.json()["error"]["code"] == "draining"
    assert threads[1].is_alive()  # readiness turned before the drain ended the long stream
    assert httpx.get(srv.base + "/v1/health/live").status_code == 200  # the process still answers
    r = httpx.post(srv.base + "/v1/chat/completions", json={"messages": USER})
    assert r.status_code == 503 and r.json()["error"]["code"] == "draining" and "retry-after" in r.headers
    for t in threads:
        t.join(timeout=15)
    assert short[-1] == "[DONE]" and short[-2]["choices"][0]["finish_reason"] == "length"  # finished in time
    assert long_[-1] == "[DONE]" and long_[-2]["error"]["code"] == "draining"  # ended readably, not cut
    srv.thread.join(timeout=15)
    assert not srv.thread.is_alive() and shut and shut[0] - t0 < 20
    assert len(backend.aborted) == 1
