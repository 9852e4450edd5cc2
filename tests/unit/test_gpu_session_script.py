"""bench/gpu_session.sh: the steps a GPU session chains run the bench scripts with a given python and
leave their figures and logs in $OUT (what comes back from the device machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "bench" / "gpu_session.sh"


def run_step(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path / "out"), SITE=str(tmp_path / "site"))
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )


def test_chained_steps_leave_their_figures_and_logs_in_out(tmp_path):
    bench = run_step(tmp_path, "bench", "--dry-run", "--dtypes", "bf16")
    assert bench.returncode == 0, bench.stdout[-2000:] + bench.stderr[-2000:]
    assert "transformers" in bench.stdout.splitlines()[0]  # the versions line comes first
    tune = run_step(tmp_path, "tune", "--dry-run", "--kernels", "w8a16")
    assert tune.returncode == 0, tune.stdout[-2000:] + tune.stderr[-2000:]
    out = tmp_path / "out"
    figures = [json.loads(line) for line in (out / "cpu-dry-run.jsonl").read_text().splitlines()]
    assert {f["dtype"] for f in figures} == {"bf16"} and len(figures) > 10
    assert [json.loads(line)["kernel"] for line in (out / "tune.jsonl").read_text().splitlines()] == ["w8a16"] * 2
    assert "figures appended" in (out / "bench.log").read_text()
    assert "tuning on" in (out / "tune.log").read_text()
    summary = run_step(tmp_path, "summary")  # the closing table reads the figures, not tune.jsonl's tiles
    assert summary.returncode == 0, summary.stdout[-2000:] + summary.stderr[-2000:]
    (row,) = [line.split() for line in summary.stdout.splitlines() if line.startswith("tiny")]
    assert row[:2] == ["tiny", "bf16"] and row[4].endswith("%") and float(row[2]) > 0, summary.stdout


def test_a_failing_step_fails_the_chain(tmp_path):
    failed = run_step(tmp_path, "bench", "--dry-run", "--models", "70b")
    assert failed.returncode != 0  # the python error is not swallowed by the log's tee
    unknown = run_step(tmp_path, "benchmark")
    assert unknown.returncode == 2 and "unknown step" in unknown.stderr


def test_a_session_skips_the_steps_its_budget_cannot_hold(tmp_path):
    # 40 s less the 15 s margin leaves every step under the 30 s it needs to start: all five are
    # skipped, in their order, and the session still ends cleanly with its log in $OUT
    session = run_step(tmp_path, "session", "40")
    assert session.returncode == 0, session.stdout[-2000:] + session.stderr[-2000:]
    log = (tmp_path / "out" / "session.log").read_text().splitlines()
    expected = [
        "== skip bench --models 26b --dtypes bf16",
        "== skip bench --models 26b --dtypes fp8 --transformers off",
        "== skip bench --models 31b --dtypes fp8 --transformers off",
        "== skip profile --model 26b --batch 1",
        "== skip check",
    ]
    assert len(log) == len(expected) and all(line.startswith(want) for line, want in zip(log, expected)), log


def test_the_decode_plan_runs_its_own_steps_and_an_unknown_plan_is_refused(tmp_path):
    session = run_step(tmp_path, "session", "40", "decode")
    assert session.returncode == 0, session.stdout[-2000:] + session.stderr[-2000:]
    log = (tmp_path / "out" / "session.log").read_text().splitlines()
    assert log[0].startswith("== skip tune --kernels gemv-switch,expert-gemv-switch") and len(log) == 6
    assert log[3].startswith("== skip check -k gemv or one_row or routed or greedy")
    assert log[2].startswith("== skip profile --model 26b --dtype fp8 --gemv off")
    (tmp_path / "owed").mkdir()
    owed = run_step(tmp_path / "owed", "session", "40", "owed")
    assert owed.returncode == 0, owed.stdout[-2000:] + owed.stderr[-2000:]
    first = (tmp_path / "owed" / "out" / "session.log").read_text().splitlines()[0]
    assert first.startswith("== skip bench --models 31b --dtypes bf16")  # the table's missing model first
    (tmp_path / "h200").mkdir()
    h200 = run_step(tmp_path / "h200", "session", "40", "h200")
    assert h200.returncode == 0, h200.stdout[-2000:] + h200.stderr[-2000:]
    log = (tmp_path / "h200" / "out" / "session.log").read_text().splitlines()
    assert [line.split(":")[0] for line in log] == [
        "== skip truedims",
        "== skip check -k not true_dimensions",
        "== skip bench --models 26b --dtypes bf16,fp8 --transformers off",
        "== skip bench --models 31b --dtypes fp8 --transformers off",
    ]
    assert "== summary" in h200.stdout  # the table comes last, whatever ran
    unknown = run_step(tmp_path, "session", "40", "everything")
    assert unknown.returncode == 2 and "unknown plan" in unknown.stderr


def test_the_loop_plan_rehearsed_on_the_cpu_leaves_both_modes_figures(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path / "out"), SITE=str(tmp_path / "site"), DRY_RUN="1")
    session = subprocess.run(
        ["bash", str(SCRIPT), "session", "300", "loop"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert session.returncode == 0, session.stdout[-2000:] + session.stderr[-2000:]
    log = (tmp_path / "out" / "session.log").read_text().splitlines()
    assert log[0].startswith("== loop --random tiny") and log[-1].split(":")[1].startswith(" exit 0"), log
    rows = [json.loads(line) for line in (tmp_path / "out" / "engine_loop.jsonl").read_text().splitlines()]
    assert {(r["mode"], r["concurrency"]) for r in rows} == {(m, c) for m in ("thread", "process") for c in (1, 4)}
    assert all(r["tok_s"] > 0 and r["itl_ms"] > 0 and r["ttft_ms"] > 0 and r["torch_threads"] >= 1 for r in rows)
    table = (tmp_path / "out" / "loop.log").read_text().split("worker/thread", 1)[1].splitlines()
    assert sum(line.rstrip().endswith("%") for line in table) == 2  # the worker beside the thread, each concurrency
