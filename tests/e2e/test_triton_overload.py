"""Overload and drain through the Triton path: a real tritonserver (the tiny random engine, a batch of 4)
behind the OpenAI translator, over loopback. The model refuses beyond its batch plus its
`max_queued_requests` parameter (the translator answers 503 + Retry-After); the translator's own
`--max-queued-requests` and SIGTERM drain behave as they do in front of the embedded runtime; tritonserver's
SIGTERM lets live requests finish for the model's `drain_timeout`, then ends them readably."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import signal
import time

import httpx
import pytest
import uvicorn

from bench.uvicorn_thread import UvicornThread, free_port

USER = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def triton(random_tiny_engine_dir, tmp_path_factory):
    from triton_bridge.launcher import TritonPorts, start_triton

    if not (shutil.which("tritonserver") or importlib.util.find_spec("pytriton")):
        pytest.skip("no tritonserver on PATH and nvidia-pytriton is not installed")
    from tests.e2e.conftest import free_ports

    log = tmp_path_factory.mktemp("triton-overload") / "tritonserver.log"
    server = start_triton(
        random_tiny_engine_dir,
        TritonPorts(*free_ports(3)),
        runtime_config={"max_num_seqs": 4, "device": "cpu"},
        log_path=log,
        timeout=300,
        record_engine_path=False,
        model_params={"max_queued_requests": 2, "drain_timeout": 2},
    )
    yield server
    server.stop()


def translator(triton, engine_dir, **settings):
    from server.app import create_app
    from server.settings import ServerSettings
    from triton_bridge.client import TritonBackend

    backend = TritonBackend.from_uri(triton.backend_uri, engine_dir=engine_dir)
    return create_app(ServerSettings(**settings), backend)


async def burst(base: str, count: int, body: dict):
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=httpx.Limits(max_connections=count)) as client:
        return await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(count)))


async def stream_done(client: httpx.AsyncClient, body: dict) -> tuple[bool, bool]:
    """(ended with [DONE], saw an error event)"""
    done = error = False
    async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        async for line in r.aiter_lines():
            done = done or line == "data: [DONE]"
            error = error or line.startswith('data: {"error"')
    return done, error


def test_overload_through_triton(triton, random_tiny_engine_dir):
    body = {"messages": USER, "max_tokens": 16, "ignore_eos": True}
    with UvicornThread(translator(triton, random_tiny_engine_dir)) as srv:  # the model's bound: 4 + 2
        answers = asyncio.run(burst(srv.base_url, 24, body))
        codes = [r.status_code for r in answers]
        assert set(codes) <= {200, 503} and 503 in codes and codes.count(200) >= 6, codes
        assert all(r.headers.get("retry-after") == "1" for r in answers if r.status_code == 503)
        assert all(r.json()["usage"]["completion_tokens"] == 16 for r in answers if r.status_code == 200)
    with UvicornThread(
        translator(triton, random_tiny_engine_dir, max_queued_requests=3)
    ) as srv:  # the translator's bound
        answers = asyncio.run(burst(srv.base_url, 12, body))
        refused = [r for r in answers if r.status_code == 503 and r.json()["error"]["code"] == "overloaded"]
        assert refused and {r.status_code for r in answers} <= {200, 503}


def test_translator_drains_in_front_of_triton(triton, random_tiny_engine_dir):
    from server.drain import DrainingServer

    app = translator(triton, random_tiny_engine_dir)
    port = free_port()
    server = DrainingServer(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"), app.state.ctx.admission, 1.0
    )
    import threading

    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"

    async def scenario():
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            streams = [
                asyncio.create_task(stream_done(client, {"messages": USER, "max_tokens": 6000, "ignore_eos": True}))
                for _ in range(3)
            ]
            await asyncio.sleep(1.0)
            server.handle_exit(signal.SIGTERM, None)
            await asyncio.sleep(0.2)
            ready = (await client.get("/v1/health/ready")).status_code
            new = (await client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2})).status_code
            return ready, new, await asyncio.gather(*streams)

    ready, new, results = asyncio.run(scenario())
    assert ready == 503 and new == 503
    assert all(done and error for done, error in results), results  # ended by the drain, readably
    thread.join(timeout=20)
    assert not thread.is_alive()
