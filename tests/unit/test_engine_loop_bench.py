"""bench/engine_loop.py: the engine loop on a thread against one in a worker process, without HTTP. The
GPU session runs it at the models' true dimensions (bench/gpu_session.sh, plan `loop`); here it runs whole
on the CPU, the worker drawing its own random weights as it does there."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.engine_loop import parse_args, table


def test_separate_runs_each_mode_in_a_fresh_process_and_keeps_its_rows(tmp_path):
    """The --separate path (a child per mode). The interleaved default runs whole in the GPU plan's CPU
    rehearsal (tests/unit/test_gpu_session_script.py), both modes drawn as random engines."""
    out = tmp_path / "loop.jsonl"
    args = ["--random", "tiny", "--concurrency", "1,3", "--tokens", "4", "--repeat", "1", "--separate"]
    args += ["--modes", "thread", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.engine_loop", *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["mode"], r["concurrency"]) for r in rows] == [("thread", 1), ("thread", 3)]
    for r in rows:
        assert r["tok_s"] > 0 and r["ttft_ms"] > 0 and r["itl_ms"] > 0 and r["torch_threads"] >= 1
        assert r["engine"] == "random tiny bf16" and r["date"]
    assert sum(" thread " in line for line in proc.stdout.splitlines()) == 2


def test_the_table_sets_the_worker_beside_the_thread():
    rows = [
        {"mode": "thread", "concurrency": 1, "torch_threads": 1, "tok_s": 200.0, "itl_ms": 5.0, "ttft_ms": 9.0},
        {"mode": "process", "concurrency": 1, "torch_threads": 1, "tok_s": 190.0, "itl_ms": 5.3, "ttft_ms": 9.5},
    ]
    text = table(rows)
    assert "95.0%" in text.splitlines()[-1] and "process" in text.splitlines()[-1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--random", "70b"], "unknown model '70b'"),
        (["--engine", "engines/nope"], "not an engine"),
        (["--random", "tiny", "--modes", "fork"], "unknown ['fork']"),
    ],
)
def test_a_mistaken_flag_is_told_before_anything_loads(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
