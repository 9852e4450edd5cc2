"""Tensor-parallel fixtures: tiny random checkpoints (both shapes, with the vision tower) and their float32
engines, and helpers to see which processes a test left behind (through /proc: no psutil needed)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from transformers import Gemma4ForConditionalGeneration

from engine_builder.convert import build_engine
from engine_builder.tiny.random_checkpoint import make_tiny_checkpoint

SLIDING_WINDOW = 8


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory):
    """kind -> (engine dir, HF model), built once per session and only when a test asks for them."""
    cache: dict[str, tuple[Path, object]] = {}

    def get(kind: str):
        if kind not in cache:
            root = tmp_path_factory.mktemp(f"tp-tiny-{kind}")
            ckpt = make_tiny_checkpoint(root / "ckpt", kind=kind, seed=5, sliding_window=SLIDING_WINDOW)
            engine_dir = build_engine(str(ckpt), root / "engines", dtype="float32", progress=False)
            hf = Gemma4ForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
            cache[kind] = (engine_dir, hf)
        return cache[kind]

    return get


def children_of(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is `pid`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def wait_gone(pids: list[int], timeout: float = 30.0) -> list[int]:
    """The pids still alive after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def descendants_of(pid: int) -> list[int]:
    """Every live process below `pid`."""
    out, todo = [], [pid]
    while todo:
        kids = children_of(todo.pop())
        out += kids
        todo += kids
    return out


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
