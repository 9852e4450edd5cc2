"""`python -m server` as a process of its own on the CPU (gloo), shared by the tensor-parallel server tests:
started on a free port, waited for until ready, its worker ranks found, and everything killed at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

from tests.e2e.conftest import free_ports
from tests.parallel.conftest import alive, children_of, cmdline

REPO_ROOT = Path(__file__).resolve().parents[2]
TP_ARGS = ["--tensor-parallel-size", "2", "--enable-expert-parallel"]


class Server:
    def __init__(self, engine_dir: Path, log_path: Path, extra: list[str]):
        self.port = free_ports(1)[0]
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'build'}"}
        cmd = [sys.executable, "-m", "server", "--engine", str(engine_dir), "--device", "cpu"]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--drain-timeout", "5", *extra]
        self.log_path = log_path
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while not self.ready():
            assert self.proc.poll() is None, f"the server exited: {log_path.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.2)
        self.workers = [p for p in children_of(self.proc.pid) if b"spawn_main" in cmdline(p)]
        self.descendants = children_of(self.proc.pid)  # the workers and multiprocessing's resource tracker

    def ready(self) -> bool:
        try:
            return httpx.get(self.base + "/v1/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill_mid_stream(self, pid: int, messages: list[dict], after: int = 3) -> None:
        """A long stream, and `pid` SIGKILLed once `after` chunks came: the stream must end in an API
        error, and readiness turn 503 within 10 s."""
        import pytest

        client = self.client()
        stream = client.chat.completions.create(
            model=client.models.list().data[0].id,
            messages=messages,
            max_tokens=4000,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        received = 0
        with pytest.raises(openai.APIError):
            for _chunk in stream:
                received += 1
                if received == after:
                    os.kill(pid, signal.SIGKILL)
        assert received >= after
        deadline = time.monotonic() + 10
        while self.ready():
            assert time.monotonic() < deadline, f"readiness stayed 200 with process {pid} gone"
            time.sleep(0.1)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base + "/v1", api_key="not-used", max_retries=0, timeout=60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        for p in self.descendants:
            if alive(p):
                os.kill(p, signal.SIGKILL)
