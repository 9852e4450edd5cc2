"""bench/http_overhead.py's split of CPU time by thread: what the server's event loop (the uvicorn
thread) and the engine loop spent, read from /proc, each charged to its own group."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from bench.http_overhead import cpu_by_group, thread_cpu_s

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task")


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_each_threads_cpu_lands_in_its_group():
    release = threading.Event()

    def busy_then_wait(seconds: float) -> None:
        _spin(seconds)
        release.wait()

    before = thread_cpu_s()
    loop = threading.Thread(target=busy_then_wait, args=(0.3,), name="uvicorn-1234")
    engine = threading.Thread(target=busy_then_wait, args=(0.05,), name="engine-loop")
    loop.start(), engine.start()
    deadline = time.monotonic() + 30  # a loaded machine gives the threads their CPU slowly
    while time.monotonic() < deadline:
        now = cpu_by_group(before, thread_cpu_s())
        if now["event_loop"] >= 0.29 and now["engine"] >= 0.04:
            break
        time.sleep(0.02)
    after = thread_cpu_s()  # read while both threads still live: /proc forgets a thread that ended
    release.set()
    loop.join(), engine.join()
    spent = cpu_by_group(before, after)
    assert 0.28 <= spent["event_loop"] <= 1.0
    assert 0.03 <= spent["engine"] < 0.28


def test_a_thread_that_ended_is_left_out_not_subtracted():
    before = {("engine", 1): 5.0, ("event_loop", 2): 1.0}
    after = {("event_loop", 2): 1.5, ("event_loop", 3): 0.25}  # 1 ended, 3 was born
    assert cpu_by_group(before, after) == {"engine": 0.0, "event_loop": 0.75, "worker": 0.0}


def test_the_engine_process_counts_as_the_worker_group():
    """--engine-process: the engine's own process is read whole, under "worker"."""
    import subprocess

    spin = "import time\nend = time.process_time() + 1.0\nwhile time.process_time() < end: pass\ninput()"
    child = subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.PIPE)
    try:
        before = thread_cpu_s(child.pid)
        deadline = time.monotonic() + 30
        while cpu_by_group(before, thread_cpu_s(child.pid))["worker"] < 0.2 and time.monotonic() < deadline:
            time.sleep(0.02)
        spent = cpu_by_group(before, thread_cpu_s(child.pid))
        assert 0.2 <= spent["worker"] < 2.0 and spent["engine"] == 0.0
    finally:
        child.communicate(b"\n", timeout=30)
