"""`make bench` with --tensor-parallel-size: its dry run on the CPU (the ranks over gloo; figures that check
the path, not speed), and the one-line error for more ranks than GPUs."""

from __future__ import annotations

import json
import subprocess
import sys
from argparse import Namespace

import pytest

from bench.bench_checks import check_bench_args
from server.cli_errors import UserError


def test_dry_run_at_tp2_with_expert_parallel_records_its_figures(tmp_path):
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--dry-run", "--results-dir", str(results), "--transformers", "off"]
        + ["--dtypes", "bf16", "--tensor-parallel-size", "2", "--enable-expert-parallel"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = [json.loads(line) for line in (results / "cpu-dry-run.jsonl").read_text().splitlines()]
    assert {f["system"] for f in figures} == {"ours-tp2-ep"}
    decode = [f for f in figures if f["metric"] == "decode_tokens_per_s_total"]
    assert decode and all(f["value"] > 0 for f in decode)


def test_more_ranks_than_gpus_is_one_line():
    args = Namespace(dry_run=False, dtypes=None, ours="on", transformers="on", tensor_parallel_size=64)
    with pytest.raises(UserError, match="--tensor-parallel-size 64"):
        check_bench_args(args, cuda_available=True)
