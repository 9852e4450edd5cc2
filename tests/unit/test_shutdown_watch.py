"""The Triton model's shutdown watch (triton_bridge/shutdown_watch.py): when it decides tritonserver is
going away, and where it asks. The whole path (SIGTERM to a real tritonserver with streams live) is
tests/e2e/test_triton_overload.py::test_tritonserver_sigterm_ends_streams_readably."""

from __future__ import annotations

import http.server
import threading

import pytest

from triton_bridge.launcher import EXIT_MARGIN_S, exit_timeout_s
from triton_bridge.shutdown_watch import CONFIRMATIONS, ShutdownWatch, model_ready_probe, server_http_url


def scripted(answers):
    """An is_ready callable returning (or raising) each answer in turn."""
    it = iter(answers)

    def is_ready():
        answer = next(it)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return is_ready


def run_polls(answers) -> list[str]:
    fired: list[str] = []
    watch = ShutdownWatch(scripted(answers), fired.append)
    for _ in answers:
        watch.poll()
    return fired


def test_fires_once_after_ready_then_not_ready_in_a_row():
    assert len(run_polls([True] + [False] * CONFIRMATIONS + [False, False])) == 1


def test_a_model_still_loading_is_no_shutdown():
    assert run_polls([False] * 5) == []  # never seen ready: the model is still loading
    assert len(run_polls([False, False, True] + [False] * CONFIRMATIONS)) == 1


def test_one_slow_answer_is_no_shutdown():
    answers = [True, TimeoutError("slow"), True, False, True] * 2
    assert CONFIRMATIONS >= 2 and run_polls(answers) == []


def test_a_refused_probe_counts_as_exiting_and_says_so():
    fired = run_polls([True] + [ConnectionRefusedError("refused")] * CONFIRMATIONS)
    assert len(fired) == 1 and "ConnectionRefusedError" in fired[0]


def test_run_stops_when_asked():
    stop = threading.Event()
    stop.set()
    watch = ShutdownWatch(scripted([]), lambda why: None)
    watch.run(stop)  # returns at once: nothing polled (an empty script would raise StopIteration)
    assert not watch.fired


class _Ready(http.server.BaseHTTPRequestHandler):
    status = 200
    paths: list[str] = []

    def do_GET(self):  # noqa: N802  the handler's required name
        type(self).paths.append(self.path)
        self.send_response(type(self).status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_triton_http():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ready)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Ready.paths = []
    yield server
    server.shutdown()
    server.server_close()


def test_the_probe_asks_for_this_model_version(fake_triton_http):
    url = f"http://127.0.0.1:{fake_triton_http.server_address[1]}"
    probe = model_ready_probe(url, "gemma4", "1")
    _Ready.status = 200
    assert probe() is True
    _Ready.status = 400  # tritonserver's answer while exiting, or for a model that is unloading
    assert probe() is False
    assert _Ready.paths == ["/v2/models/gemma4/versions/1/ready"] * 2
    fake_triton_http.shutdown()
    fake_triton_http.server_close()
    with pytest.raises(OSError):  # refused: ShutdownWatch counts it as not ready
        probe()


def test_the_url_comes_from_the_parameter_else_the_parent_command_line(tmp_path, monkeypatch):
    assert server_http_url({"server_http_url": "http://10.0.0.2:8010/"}) == "http://10.0.0.2:8010"

    def with_parent_args(*argv: str) -> str | None:
        proc = tmp_path / "proc"
        (proc / "4242").mkdir(parents=True, exist_ok=True)
        (proc / "4242" / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        real_open = open
        monkeypatch.setattr(
            "builtins.open", lambda p, *a, **k: real_open(str(p).replace("/proc", str(proc), 1), *a, **k)
        )
        try:
            return server_http_url({}, parent_pid=4242)
        finally:
            monkeypatch.setattr("builtins.open", real_open)

    assert with_parent_args("tritonserver", "--model-repository=/m", "--http-port=9123") == "http://127.0.0.1:9123"
    assert with_parent_args("tritonserver", "--model-repository=/m") == "http://127.0.0.1:8000"
    assert with_parent_args("tritonserver", "--allow-http=false") is None
    assert server_http_url({}, parent_pid=2**22 + 12345) is None  # no such process


def test_tritonserver_waits_for_the_drain_it_asked_for(tmp_path):
    repo = tmp_path / "repo"
    (repo / "gemma4").mkdir(parents=True)
    (repo / "gemma4" / "config.pbtxt").write_text(
        'name: "gemma4"\nbackend: "python"\nparameters: [{ key: "drain_timeout" value: { string_value: "45" } }]\n'
    )
    assert exit_timeout_s(repo, None) == 45 + EXIT_MARGIN_S
    assert exit_timeout_s(repo, {"drain_timeout": 1.5}) == 2 + EXIT_MARGIN_S
