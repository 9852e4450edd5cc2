"""Fault tests against the real runtime (a tiny random engine on CPU) over loopback HTTP: a load storm
with random disconnects, head-of-line blocking by giant prompts, overload, slow-header clients, and
SIGTERM on a real `python -m server` process. Bounded: well under a minute together on 2 cores.

Bounds stated here (docs/operations.md): while a 5 MB and a 30 MB prompt arrive, running streams'
largest gap between tokens and /v1/health/live stay within an allowance (HOL_BOUND_S, or three parses of
the 30 MB body on a slower machine) of what they are without them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from bench.uvicorn_thread import UvicornThread, free_port
from tests.e2e.stream_support import read_stream, settle, storm_of_streams

REPO_ROOT = Path(__file__).resolve().parents[2]
USER = [{"role": "user", "content": "Hello"}]
# What the giant prompts may add to the worst health latency and token gap seen without them (a baseline
# window measured first, on the same loaded machine). The one stall left is the 30 MB body's parse: one
# orjson call on a prompt worker, which holds the interpreter lock (server/body_route.py); it is allowed
# three times what that parse takes in this process just before, when that is above HOL_BOUND_S (a machine
# shared by several test runs). Before the fix the parse and a surrogate scan ran on the event loop
# (1.4-3.9 s); before the size bound, rendering and tokenizing the 5 MB prompt froze everything for 15-38 s.
HOL_BOUND_S = 0.5


@pytest.fixture(scope="module", params=["engine-thread", "engine-process"])
def engine_backend(random_tiny_engine_dir, request):
    """The runtime on a thread of the server's process, and in a worker process (`--engine-process`)."""
    from gemma_runtime.config import RuntimeConfig
    from server.backend import EmbeddedBackend

    backend = EmbeddedBackend.from_engine_dir(
        random_tiny_engine_dir, RuntimeConfig(max_num_seqs=16, device="cpu"), request.param == "engine-process"
    )
    backend.start()
    yield backend
    backend.shutdown()


def serve(backend, **settings) -> UvicornThread:
    from server.app import create_app
    from server.settings import ServerSettings

    return UvicornThread(create_app(ServerSettings(**settings), backend, manage_backend=False))


def test_storm_of_streams_with_random_disconnects(engine_backend):
    baseline = engine_backend.stats().kv_usage
    with serve(engine_backend) as srv:
        plan, results = asyncio.run(storm_of_streams(srv.base_url, 256))
        kept = [r for leave, r in zip(plan, results) if leave is None]
        assert kept and all(r["done"] and r["finish"] == "length" for r in kept)
        settle(engine_backend, baseline)


def test_giant_prompts_do_not_stall_streams_or_health(engine_backend):
    # Encoded before any clock starts: the client shares this process (and its GIL) with the server.
    giants = [
        json.dumps({"messages": [{"role": "user", "content": "word " * (mb * 1024 * 1024 // 5)}]}).encode()
        for mb in (5, 30)
    ]
    parse_s = []
    for _ in range(3):
        t0 = time.perf_counter()
        orjson.loads(giants[1])
        parse_s.append(time.perf_counter() - t0)
    allowance = max(HOL_BOUND_S, 3 * sorted(parse_s)[1])

    async def scenario(base: str):
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
            body = {"messages": USER, "max_tokens": 4000, "ignore_eos": True}
            records = [{} for _ in range(8)]
            streams = [asyncio.create_task(read_stream(client, body, record=rec)) for rec in records]
            await asyncio.sleep(1.0)
            stop, worst = asyncio.Event(), {}

            async def poll(window: str):
                while not stop.is_set():
                    t0 = time.perf_counter()
                    assert (await client.get("/v1/health/live")).status_code == 200
                    worst[window] = max(worst.get(window, 0.0), time.perf_counter() - t0)
                    await asyncio.sleep(0.02)

            headers = {"content-type": "application/json"}
            poller = asyncio.create_task(poll("baseline"))
            b0 = time.perf_counter()
            await asyncio.sleep(2.0)
            b1 = time.perf_counter()
            stop.set()
            await poller
            stop.clear()
            poller = asyncio.create_task(poll("giants"))
            t0 = time.perf_counter()
            answers = await asyncio.gather(
                *(client.post("/v1/chat/completions", content=g, headers=headers) for g in giants)
            )
            t1 = time.perf_counter()
            stop.set()
            await poller
            for s in streams:
                s.cancel()
            await asyncio.gather(*streams, return_exceptions=True)
            return answers, records, (b0, b1), (t0, t1), worst

    with serve(engine_backend) as srv:
        answers, streams, baseline, window, worst = asyncio.run(scenario(srv.base_url))
    for r in answers:
        assert r.status_code in (400, 413) and r.json()["error"]["code"] in (
            "context_length_exceeded",
            "request_too_large",
        ), r.text[:200]
    assert window[1] - window[0] < 60

    def largest_gap(start: float, end: float, within: bool) -> float:
        """The largest gap between two tokens of a stream: inside the window, or overlapping it at all."""
        pairs = [(a, b) for rec in streams for a, b in zip(rec["times"], rec["times"][1:])]
        gaps = [b - a for a, b in pairs if (start <= a and b <= end if within else b >= start and a <= end)]
        assert gaps, "the streams produced nothing in the window"
        return max(gaps)

    base_gap, gap = largest_gap(*baseline, within=True), largest_gap(*window, within=False)
    print(
        f"giant prompts: {window[1] - window[0]:.2f} s to both refusals; largest stream gap {gap:.3f} s "
        f"(baseline {base_gap:.3f} s), health {worst['giants']:.3f} s (baseline {worst['baseline']:.3f} s); "
        f"allowance {allowance:.3f} s (a 30 MB parse here: {sorted(parse_s)[1]:.3f} s)"
    )
    assert gap < base_gap + allowance, f"largest token gap {gap:.3f} s"
    assert worst["giants"] < worst["baseline"] + allowance, f"health took {worst['giants']:.3f} s"


def test_overload_gets_503_retry_after_and_nothing_else(engine_backend):
    baseline = engine_backend.stats().kv_usage

    async def burst(base: str):
        async with httpx.AsyncClient(base_url=base, timeout=120, limits=httpx.Limits(max_connections=100)) as client:
            return await asyncio.gather(
                *(
                    client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 24, "ignore_eos": True})
                    for _ in range(80)
                )
            )

    with serve(engine_backend, max_queued_requests=4) as srv:  # capacity: 16 in the batch + 4
        answers = asyncio.run(burst(srv.base_url))
        codes = [r.status_code for r in answers]
        assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) >= 20, codes
        for r in answers:
            if r.status_code == 503:
                assert r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "overloaded"
            else:
                assert r.json()["usage"]["completion_tokens"] == 24
        settle(engine_backend, baseline)
        metrics = httpx.get(srv.base_url + "/metrics").text.splitlines()
        rejected = [
            line
            for line in metrics
            if line.startswith("gemma_requests_rejected_total") and 'reason="queue_full"' in line
        ]
        assert rejected and float(rejected[0].rsplit(" ", 1)[1]) == codes.count(503)


def test_slow_header_clients_do_not_stop_normal_requests(engine_backend):
    with serve(engine_backend) as srv:
        socks = []
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHo")
            socks.append(s)
        try:
            for _ in range(3):
                for s in socks:
                    s.sendall(b"s")  # a byte a second, never finishing the headers
                t0 = time.perf_counter()
                r = httpx.post(
                    srv.base_url + "/v1/chat/completions", json={"messages": USER, "max_tokens": 4}, timeout=30
                )
                assert r.status_code == 200 and time.perf_counter() - t0 < 5
                time.sleep(max(0.0, 1.0 - (time.perf_counter() - t0)))
        finally:
            for s in socks:
                s.close()


def test_sigterm_drains_a_real_server(random_tiny_engine_dir):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'build'}"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server",
            "--engine",
            str(random_tiny_engine_dir),
            "--device",
            "cpu",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--drain-timeout",
            "5",
        ],
        cwd=REPO_ROOT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(base + "/v1/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)

        async def scenario():
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                short = asyncio.create_task(read_stream(client, {"messages": USER, "max_tokens": 32}))
                records = [{} for _ in range(4)]
                longs = [
                    asyncio.create_task(
                        read_stream(client, {"messages": USER, "max_tokens": 8000, "ignore_eos": True}, record=rec)
                    )
                    for rec in records
                ]
                # SIGTERM only once every long stream is under way: a request the server has not yet
                # admitted is not in flight, and a drain with nothing in flight ends at once.
                started = time.monotonic()
                while not all(rec.get("times") for rec in records):
                    assert time.monotonic() - started < 60, "the streams never started"
                    await asyncio.sleep(0.05)
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                ready = await client.get("/v1/health/ready")
                live = await client.get("/v1/health/live")
                new = await client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2})
                return ready, live, new, await short, await asyncio.gather(*longs)

        ready, live, new, short, longs = asyncio.run(scenario())
        assert ready.status_code == 503 and live.status_code == 200
        assert new.status_code == 503 and new.json()["error"]["code"] == "draining"
        assert short["done"] and short["finish"] == "length"
        assert all(r["done"] for r in longs)  # ended with an error event and [DONE]: never a cut body
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected death
def test_readiness_turns_503_when_the_engine_thread_dies(random_tiny_engine_dir):
    from gemma_runtime.config import RuntimeConfig
    from server.backend import EmbeddedBackend

    backend = EmbeddedBackend.from_engine_dir(random_tiny_engine_dir, RuntimeConfig(max_num_seqs=2, device="cpu"))

    def fatal():
        raise SystemExit("injected: the engine thread dies")  # not an Exception: the loop does not survive it

    with serve(backend) as srv:
        backend.start()
        assert httpx.get(srv.base_url + "/v1/health/ready", timeout=30).status_code == 200
        backend.engine.engine.step = fatal
        with pytest.raises(httpx.ReadTimeout):  # the dead engine never answers (--request-timeout bounds this)
            httpx.post(
                srv.base_url + "/v1/chat/completions",
                json={"messages": USER, "max_tokens": 4, "stream": True},
                timeout=3,
            )
        t0 = time.perf_counter()
        ready = httpx.get(srv.base_url + "/v1/health/ready")
        assert ready.status_code == 503 and time.perf_counter() - t0 < 1.0
        assert httpx.get(srv.base_url + "/v1/health/live").status_code == 200
    backend.shutdown()
