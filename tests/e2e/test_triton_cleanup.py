"""No process outlives a stopped tritonserver: its Python backend stub goes with it, whether the server
stops on SIGTERM or has died first (killed, as a crash would). The stub runs in the server's process
group (the launcher starts tritonserver in a session of its own), so the group is what is checked."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import time

import pytest

from tests.e2e.conftest import RUNTIME, free_ports
from triton_bridge.process_group import group_members

pytestmark = pytest.mark.skipif(
    not (shutil.which("tritonserver") or importlib.util.find_spec("pytriton")),
    reason="no tritonserver on PATH and nvidia-pytriton is not installed",
)


def start(engine_dir, tmp_path):
    from triton_bridge.launcher import TritonPorts, start_triton

    server = start_triton(
        engine_dir,
        TritonPorts(*free_ports(3)),
        runtime_config=RUNTIME,
        log_path=tmp_path / "tritonserver.log",
        timeout=300,
        record_engine_path=False,
    )
    pgid = server.process.pid
    others = [p for p in group_members(pgid) if p != pgid]
    assert others, "the loaded model runs in a backend stub of the server's group"
    return server, pgid, others


def alive(pid: int) -> bool:
    """Running, or stopped: anything but exited (a zombie waiting to be reaped counts as exited)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


@pytest.mark.parametrize("how", ["sigterm", "server-killed-first", "server-killed-stub-stopped"])
def test_stop_leaves_no_process_of_the_server_behind(random_tiny_dense_engine_dir, tmp_path, how):
    server, pgid, stubs = start(random_tiny_dense_engine_dir, tmp_path)
    try:
        if how == "server-killed-stub-stopped":
            # A stub that cannot act for itself (busy, as in the cancellation test where one stayed behind):
            # stopped, it can neither exit on its own nor take SIGTERM, so only the launcher's SIGKILL to the
            # group ends it. An idle stub may notice its dead server and exit alone, which can hide a launcher
            # that never ends the group.
            for pid in stubs:
                os.kill(pid, signal.SIGSTOP)
        if how.startswith("server-killed"):
            os.kill(pgid, signal.SIGKILL)
            server.process.wait(10)
            time.sleep(1.0)
            print(f"left behind by the killed server: {group_members(pgid)}")
    finally:
        server.stop()
    assert group_members(pgid) == [] and not any(alive(p) for p in stubs), stubs
