"""`python -m server --engine-process` (the engine loop in a worker process) through the openai SDK: the
same greedy answers as the engine on a thread, a worker killed mid-stream ends the stream with an error
and turns readiness, SIGTERM drains and stops the worker, SIGKILL of the server leaves no worker behind."""

from __future__ import annotations

import os
import signal
import time

import httpx
import openai
import pytest

from tests.parallel.conftest import children_of, cmdline, wait_gone
from tests.parallel.server_process import TP_ARGS, Server

MESSAGES = [{"role": "user", "content": "Hello there, how are you?"}]
FLAG = ["--engine-process"]


@pytest.fixture(scope="module")
def server(random_tiny_engine_dir, tmp_path_factory):
    srv = Server(random_tiny_engine_dir, tmp_path_factory.mktemp("engine-process") / "server.log", FLAG)
    yield srv
    srv.stop()


def answers(srv: Server) -> tuple[str, str]:
    """A greedy chat answer, whole and streamed."""
    client = srv.client()
    kwargs = dict(model=client.models.list().data[0].id, messages=MESSAGES, max_tokens=12, temperature=0.0)
    whole = client.chat.completions.create(**kwargs, extra_body={"ignore_eos": True})
    assert whole.usage.completion_tokens == 12 and whole.choices[0].finish_reason == "length"
    chunks = list(client.chat.completions.create(**kwargs, stream=True, extra_body={"ignore_eos": True}))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    return whole.choices[0].message.content, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_one_worker_process(server):
    assert len(server.workers) == 1, [cmdline(p) for p in children_of(server.proc.pid)]


def test_the_same_greedy_answers_as_the_engine_on_a_thread(server, random_tiny_engine_dir, tmp_path):
    whole, streamed = answers(server)
    assert whole == streamed and whole
    plain = Server(random_tiny_engine_dir, tmp_path / "plain.log", [])
    try:
        assert plain.workers == []  # the engine loop on a thread of the server's process
        assert answers(plain) == (whole, streamed)
    finally:
        plain.stop()


def test_killing_the_worker_mid_stream_errors_the_stream_and_readiness(server):
    server.kill_mid_stream(server.workers[0], MESSAGES)
    client = server.client()
    model = client.models.list().data[0].id
    assert httpx.get(server.base + "/v1/health/ready", timeout=5).status_code == 503
    assert httpx.get(server.base + "/v1/health/live", timeout=5).status_code == 200
    with pytest.raises(openai.InternalServerError):  # answered at once, not left hanging
        client.with_options(timeout=30).chat.completions.create(model=model, messages=MESSAGES, max_tokens=2)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM)


def test_sigterm_with_a_stream_in_flight_stops_the_worker(random_tiny_engine_dir, tmp_path):
    srv = Server(random_tiny_engine_dir, tmp_path / "server.log", FLAG)
    try:
        assert len(srv.workers) == 1
        client = srv.client()
        stream = client.chat.completions.create(
            model=client.models.list().data[0].id, messages=MESSAGES, max_tokens=16, stream=True
        )
        next(iter(stream))
        srv.proc.send_signal(signal.SIGTERM)
        assert sum(1 for _ in stream) >= 0  # drained, not cut (--drain-timeout 5)
        assert srv.proc.wait(timeout=60) in (0, -signal.SIGTERM)
        assert wait_gone(srv.descendants) == []
    finally:
        srv.stop()


def test_a_killed_server_leaves_no_worker_behind(random_tiny_engine_dir, tmp_path):
    srv = Server(random_tiny_engine_dir, tmp_path / "server.log", FLAG)
    try:
        srv.proc.kill()  # SIGKILL: no shutdown code runs; the worker sees its end of the pipe close
        srv.proc.wait(timeout=10)
        assert wait_gone(srv.workers, timeout=15) == []
    finally:
        srv.stop()


def test_tensor_parallel_ranks_start_from_the_worker(random_tiny_engine_dir, tmp_path):
    """--tensor-parallel-size 2 --engine-process: the worker is rank 0 and starts rank 1 itself; a killed
    server takes both with it."""
    srv = Server(random_tiny_engine_dir, tmp_path / "server.log", [*TP_ARGS, *FLAG])
    try:
        assert len(srv.workers) == 1
        ranks = [p for p in children_of(srv.workers[0]) if b"spawn_main" in cmdline(p)]
        assert len(ranks) == 1, [cmdline(p) for p in children_of(srv.workers[0])]
        whole, streamed = answers(srv)
        assert whole == streamed and whole
        srv.proc.kill()
        srv.proc.wait(timeout=10)
        assert wait_gone([*srv.workers, *ranks], timeout=30) == []
    finally:
        srv.stop()


@pytest.mark.parametrize("flags", [FLAG, []], ids=["engine-process", "engine-thread"])
def test_ctrl_c_stops_both_processes_without_a_traceback(random_tiny_engine_dir, tmp_path, flags):
    """Ctrl+C reaches the whole process group (`make serve` in a terminal): the worker leaves it to the
    server's process, which shuts down and stops the worker; neither prints a traceback (nor does the
    server alone, which printed uvicorn's re-raised KeyboardInterrupt)."""
    import subprocess
    import sys

    from tests.e2e.conftest import free_ports
    from tests.parallel.server_process import REPO_ROOT

    port = free_ports(1)[0]
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "server", "--engine", str(random_tiny_engine_dir), "--device", "cpu"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        workers = [p for p in children_of(proc.pid) if b"spawn_main" in cmdline(p)]
        assert len(workers) == (1 if flags else 0)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert wait_gone(workers, timeout=30) == []
        text = log.read_text()
        assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_step_failing_in_the_worker_mid_stream_is_an_error_event_then_done(random_tiny_engine_dir):
    """Fault injection in the worker (its runner's 12th launch raises): the 200 and some text went out, then
    the stream ends with an error event and `[DONE]`; the next request is served."""
    import functools

    from bench.uvicorn_thread import UvicornThread
    from gemma_runtime.config import RuntimeConfig
    from gemma_runtime.engine.engine_process import EngineProcess, ProcessAsyncEngine
    from server.app import create_app
    from server.backend import EmbeddedBackend
    from server.settings import ServerSettings
    from tests.e2e.stream_support import error_after_text
    from tests.fault_injection import FAULT, serve_failing_on_step

    worker = functools.partial(serve_failing_on_step, 12)
    engine = ProcessAsyncEngine(EngineProcess(random_tiny_engine_dir, RuntimeConfig(device="cpu"), worker=worker))
    with UvicornThread(create_app(ServerSettings(), EmbeddedBackend(engine))) as srv:
        body = {"messages": MESSAGES, "max_tokens": 50, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", srv.base_url + "/v1/chat/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            events = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
        assert FAULT in error_after_text(events)["message"]
        after = httpx.post(srv.base_url + "/v1/chat/completions", json={**body, "stream": False}, timeout=60)
        assert after.status_code == 200 and after.json()["usage"]["completion_tokens"] == 50
