"""bench/run.py --dry-run: the benchmark's whole code path on the tiny engine on CPU, and its random
engines' layout checked against what the builder writes for the same geometry."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from engine_builder.convert import build_engine
from engine_builder.tiny.random_checkpoint import make_tiny_checkpoint

SCHEMA = {"date", "gpu", "model", "dtype", "system", "metric", "batch", "value", "unit"}
OURS_METRICS = {
    "bandwidth_floor_tokens_per_s",
    "ttft_ms",
    "prefill_32_tokens_per_s",
    "prefill_96_tokens_per_s",
    "decode_tokens_per_s_per_user",
    "decode_tokens_per_s_total",
    "peak_output_tokens_per_s",
    "peak_memory_gb",
}


def test_dry_run_prints_the_table_and_appends_json_lines(tmp_path):
    results = tmp_path / "results"
    (results).mkdir()
    (results / "cpu-dry-run.jsonl").write_text('{"earlier": "run"}\n')  # appended to, never overwritten
    # the decode path a GPU takes (graphs and overlap; the graphs run eagerly on the CPU)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--dry-run",
            "--results-dir",
            str(results),
            "--decode-graphs",
            "on",
            "--overlap",
            "on",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "decode graphs [1, 2, 4], overlap on" in proc.stdout
    assert "ours" in proc.stdout and "transformers" in proc.stdout and "ratio" in proc.stdout
    lines = (results / "cpu-dry-run.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"earlier": "run"}
    figures = [json.loads(line) for line in lines[1:]]
    for f in figures:
        assert set(f) == SCHEMA and f["gpu"] == "cpu-dry-run" and f["model"] == "tiny"
        assert f["system"] in {"ours", "transformers"} and math.isfinite(f["value"]) and f["value"] > 0
    for dtype in ("bf16", "fp8"):
        ours = {(f["metric"], f["batch"]) for f in figures if f["system"] == "ours" and f["dtype"] == dtype}
        assert {m for m, _ in ours} == OURS_METRICS
        assert {b for m, b in ours if m == "decode_tokens_per_s_total"} == {1, 4}
    hf = {(f["metric"], f["batch"]) for f in figures if f["system"] == "transformers"}
    assert hf == {(m, b) for m in ("decode_tokens_per_s_per_user", "decode_tokens_per_s_total") for b in (1, 4)}


def test_ablation_figures_name_what_was_off_and_land_before_a_failure(tmp_path):
    """--decode-graphs off / --overlap off mark their figures' system, so they never pass for the default
    run's; each figure is written when measured, so a run that dies later keeps what it measured."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--dry-run",
            "--results-dir",
            str(tmp_path),
            "--models",
            "tiny,no-such-model",
            "--dtypes",
            "bf16",
            "--decode-graphs",
            "off",
            "--overlap",
            "off",
            "--transformers",
            "off",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0 and "no-such-model" in proc.stderr  # the second model does not exist
    figures = [json.loads(line) for line in (tmp_path / "cpu-dry-run.jsonl").read_text().splitlines()]
    assert {f["system"] for f in figures} == {"ours-no-graphs-no-overlap"}
    assert {f["metric"] for f in figures} == OURS_METRICS and {f["model"] for f in figures} == {"tiny"}


def test_ours_off_times_only_transformers(tmp_path):
    """--ours off catches transformers up where a run was cut off before it (the 31B's arrivals run is long)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--dry-run", "--results-dir", str(tmp_path), "--ours", "off"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = [json.loads(line) for line in (tmp_path / "cpu-dry-run.jsonl").read_text().splitlines()]
    assert {f["system"] for f in figures} == {"transformers"}
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("tiny ")]
    assert len(rows) == 4 and {r[2] for r in rows} == {"decode_tokens_per_s_per_user", "decode_tokens_per_s_total"}
    assert {(f["metric"], f["batch"]) for f in figures} == {
        (m, b) for m in ("decode_tokens_per_s_per_user", "decode_tokens_per_s_total") for b in (1, 4)
    }


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_random_engine_layout_matches_the_builder(tmp_path, dtype):
    made = importlib.import_module("bench.random_engine").make_random_engine(
        "tiny", dtype, torch.device("cpu"), tmp_path / "random"
    )
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", kind="moe", sliding_window=8, with_vision=False)
    built = build_engine(str(ckpt), tmp_path / "engines", dtype=dtype, progress=False)
    with safe_open(str(Path(built) / "model.safetensors"), framework="pt") as f:
        expected = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    got = {
        k: (tuple(v.shape), {torch.float8_e4m3fn: "F8_E4M3", torch.float32: "F32", torch.bfloat16: "BF16"}[v.dtype])
        for k, v in made.weights.items()
    }
    assert got == expected
    from gemma_runtime.engine_format.spec import EngineSpec

    assert made.spec.text == EngineSpec.load(built).text
    assert made.spec.quantization == EngineSpec.load(built).quantization


def test_host_step_benchmark_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench.host_step", "--batch", "4", "--contexts", "64,128", "--steps", "4"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines()[2:]]
    assert [r[0] for r in rows] == ["64", "128"]
    assert all(float(x) > 0 for r in rows for x in r[1:])


def test_decode_launch_count_drops_with_the_fused_norms(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench.decode_launches"], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines()[-2:]}
    reference, fused = int(rows["reference"][0]), int(rows["fused"][1])
    assert fused < reference / 2  # norms, adds, scalars and rope: one kernel each instead of 8-15 torch ops


def test_a_dry_run_names_of_real_models_time_the_tiny_engine(tmp_path):
    """`bench --dry-run --models 31b` (a GPU session's step rehearsed on a CPU) must not build a 62 GB
    engine in host memory: each real model stands for the tiny one, once."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--dry-run",
            "--results-dir",
            str(tmp_path),
            "--models",
            "26b,31b",
            "--dtypes",
            "bf16",
            "--transformers",
            "off",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = [json.loads(line) for line in (tmp_path / "cpu-dry-run.jsonl").read_text().splitlines()]
    assert {f["model"] for f in figures} == {"tiny"} and len(figures) == len(
        {(f["metric"], f["batch"]) for f in figures}
    )


def test_spec_decode_dry_run_times_the_mtp_drafter(capsys):
    """`python -m bench.spec_decode --dry-run --speculative mtp` (in process: the imports are paid): a
    random drafter converted into the tiny engine, each batch's plain, verify and draft step costs, and
    each accepted length's rate computed from them as printed (L / (draft + verify), over 1 / plain)."""
    import re

    from bench.spec_decode import ACCEPTED_LENGTHS, main

    assert main(["--dry-run", "--speculative", "mtp", "--num-speculative-tokens", "2", "--batches", "1,2"]) == 0
    out = capsys.readouterr().out
    assert "speculative decoding step costs (mtp, N=2) on cpu" in out and "tiny bf16:" in out
    step = re.compile(
        r"batch +(\d+): plain step ([\d.]+) ms, verify step \(3 rows each\) ([\d.]+) ms \(([\d.]+)x\), "
        r"draft step ([\d.]+) ms; plain ([\d.]+) tok/s per user"
    )
    rate = re.compile(r"mean accepted length ([\d.]+): ([\d.]+) tok/s per user \(([\d.]+)x plain\)")
    lines = out.splitlines()
    steps = [(i, step.search(line)) for i, line in enumerate(lines) if step.search(line)]
    assert [int(m[1]) for _, m in steps] == [1, 2]
    for i, m in steps:
        plain, verify, ratio, draft, plain_rate = (float(m[k]) for k in (2, 3, 4, 5, 6))
        assert plain > 0 and verify > 0 and draft > 0  # the drafter ran: a step of a small model, not 0
        assert ratio == pytest.approx(verify / plain, abs=0.01) and plain_rate == pytest.approx(1e3 / plain, rel=0.01)
        curve = [rate.search(line) for line in lines[i + 1 : i + 1 + len(ACCEPTED_LENGTHS)]]
        assert [float(c[1]) for c in curve] == list(ACCEPTED_LENGTHS)
        for c in curve:
            length, tok_s, speedup = float(c[1]), float(c[2]), float(c[3])
            assert tok_s == pytest.approx(1e3 * length / (draft + verify), rel=0.01, abs=0.06)
            assert speedup == pytest.approx(length * plain / (draft + verify), rel=0.01, abs=0.01)


def test_make_bench_speculative_mtp_gives_the_random_engine_a_drafter(tmp_path):
    """`make bench BENCH_ARGS="--speculative mtp"`: the random engines carry no drafter of their own, so the
    bench attaches a random one (else the engine refuses to start); its drafts are counted."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--dry-run", "--speculative", "mtp", "--transformers", "off"]
        + ["--dtypes", "bf16", "--results-dir", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "cpu-dry-run.jsonl").read_text().splitlines()]
    drafted = [r["value"] for r in rows if r["metric"] == "spec_decode_drafted_tokens"]
    assert drafted and drafted[0] > 0 and all(r["system"].endswith("spec-mtp") for r in rows)
