"""Ending every process of a process group: what a stopped tritonserver leaves behind.

tritonserver is started as the leader of its own process group (`start_new_session`), and its Python
backend stubs inherit that group. When the server exits normally it takes its stubs down; when it dies
(killed, crashed) a stub is left running, orphaned, and ignores SIGTERM. So after the server has gone,
the rest of its group gets SIGTERM, a grace period, then SIGKILL.

Members are read from /proc (Linux); elsewhere the group is signalled without being listed.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

PROC = Path("/proc")


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes whose process group is `pgid`."""
    members = []
    for entry in PROC.iterdir() if PROC.is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split after the last ")"
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False  # nobody left in the group


def end_process_group(pgid: int, grace: float = 5.0) -> list[int]:
    """SIGTERM to the group, SIGKILL to whatever is still there after `grace` seconds; returns the pids that
    had to be ended. Never signals our own group."""
    if pgid == os.getpgid(0):
        raise ValueError("refusing to end the caller's own process group")
    left = group_members(pgid)
    if PROC.is_dir() and not left:
        return []
    if not _signal_group(pgid, signal.SIGTERM):
        return left
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and group_members(pgid):
        time.sleep(0.05)
    if not PROC.is_dir() or group_members(pgid):
        _signal_group(pgid, signal.SIGKILL)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and group_members(pgid):
            time.sleep(0.05)
    return left
