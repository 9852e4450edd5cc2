"""`python -m server --tensor-parallel-size 2` (what `make serve SERVER_ARGS=...` runs) on the CPU with
gloo: chat through the openai SDK, a worker killed mid-stream, SIGTERM and SIGKILL, no process left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from tests.e2e.conftest import free_ports
from tests.parallel.conftest import children_of, cmdline, wait_gone
from tests.parallel.server_process import REPO_ROOT, TP_ARGS, Server

MESSAGES = [{"role": "user", "content": "Hello there, how are you?"}]


@pytest.fixture(scope="module")
def server(random_tiny_engine_dir, tmp_path_factory):
    srv = Server(random_tiny_engine_dir, tmp_path_factory.mktemp("tp-server") / "server.log", TP_ARGS)
    yield srv
    srv.stop()


def test_one_worker_process_per_extra_rank(server):
    assert len(server.workers) == 1, [cmdline(p) for p in children_of(server.proc.pid)]


def test_chat_stream_and_non_stream_agree(server):
    client = server.client()
    kwargs = dict(model=client.models.list().data[0].id, messages=MESSAGES, max_tokens=12, temperature=0.0)
    whole = client.chat.completions.create(**kwargs, extra_body={"ignore_eos": True})
    assert whole.usage.completion_tokens == 12 and whole.choices[0].finish_reason == "length"
    chunks = list(client.chat.completions.create(**kwargs, stream=True, extra_body={"ignore_eos": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_killing_a_worker_mid_stream_errors_the_stream_and_readiness(server):
    server.kill_mid_stream(server.workers[0], MESSAGES)
    status = httpx.get(server.base + "/v1/health/ready", timeout=5)
    assert status.status_code == 503 and status.json()["error"]["code"] == "not_ready"
    assert httpx.get(server.base + "/v1/health/live", timeout=5).status_code == 200
    log = server.log_path.read_text()
    assert f"tensor-parallel worker rank 1 (pid {server.workers[0]}) exited with code -9" in log or (
        "tensor-parallel step failed" in log
    ), log[-3000:]
    # SIGTERM still ends everything: the server, the surviving helpers
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM)
    assert wait_gone(server.descendants) == []


def test_sigterm_with_a_stream_in_flight_stops_every_rank(random_tiny_engine_dir, tmp_path):
    srv = Server(random_tiny_engine_dir, tmp_path / "server.log", TP_ARGS[:2])
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
        assert "exited with code" not in srv.log_path.read_text()  # stopped by rank 0, never seen dying
    finally:
        srv.stop()


def test_a_killed_server_leaves_no_worker_behind(random_tiny_engine_dir, tmp_path):
    srv = Server(random_tiny_engine_dir, tmp_path / "server.log", TP_ARGS[:2])
    try:
        srv.proc.kill()  # SIGKILL: no shutdown code runs in rank 0; the workers notice their parent is gone
        srv.proc.wait(timeout=10)
        assert wait_gone(srv.workers, timeout=15) == []
    finally:
        srv.stop()


def test_make_serve_passes_the_flags(random_tiny_engine_dir):
    dry = subprocess.run(
        ["make", "-n", "serve", f"ENGINE={random_tiny_engine_dir}", "SERVER_ARGS=--tensor-parallel-size 2"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert "-m server" in dry.stdout and "--tensor-parallel-size 2" in dry.stdout, dry.stdout + dry.stderr


def test_a_size_the_heads_do_not_divide_is_one_line(random_tiny_engine_dir):
    out = subprocess.run(
        [sys.executable, "-m", "server", "--engine", str(random_tiny_engine_dir), "--device", "cpu"]
        + ["--tensor-parallel-size", "3", "--port", str(free_ports(1)[0])],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'build'}"},
        timeout=120,
    )
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--tensor-parallel-size 3 does not divide the 4 attention heads" in lines[0], out.stderr
