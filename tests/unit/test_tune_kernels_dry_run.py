"""bench/tune_kernels.py: its dry run (every kernel's tile swap under the interpreter) and its rule that
a candidate with a wrong output or a compile failure is reported and never chosen."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import types

import pytest
import torch


def test_dry_run_swaps_every_kernels_tiles_and_writes_json_lines(tmp_path):
    results = tmp_path / "tune.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.tune_kernels", "--dry-run", "--results", str(results)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert {r["kernel"] for r in lines} == {
        "decode",
        "prefill",
        "moe",
        "w8a16",
        "w8a16-switch",
        "gemv",
        "gemv-switch",
        "expert-gemv",
        "expert-gemv-switch",
    }
    # every candidate of the dry run computes what the runtime's own tiles compute
    assert all(r["status"] == "ok" and r["ms"] > 0 for r in lines), [r for r in lines if r["status"] != "ok"]
    # the tile functions really were swapped: two distinct candidates per case
    for case in {r["shape"] for r in lines}:
        assert len({json.dumps(r["candidate"]) for r in lines if r["shape"] == case}) == 2
    table = [line for line in proc.stdout.splitlines() if " now " in line]
    assert len(table) == len({r["shape"] for r in lines}) == 11


@pytest.fixture
def tune_kernels():
    return importlib.import_module("bench.tune_kernels")


def test_wrong_and_failing_candidates_are_reported_not_chosen(tune_kernels, capsys):
    # a stand-in tile function: tiles 1 and 2 compute the right answer (2 the slower), 3 a wrong one,
    # 4 fails the way a kernel that does not fit the registers does
    module = types.SimpleNamespace(tiles=lambda arg: 1)

    def make_run(device):
        def run():
            tiles = module.tiles(0)
            if tiles == 4:
                raise RuntimeError("out of resources: shared memory")
            if tiles == 2:
                sum(range(200_000))  # slower
            return torch.full((4,), 2.0 if tiles == 3 else 1.0)

        return run

    Case = importlib.import_module("bench.tune_cases").Case  # after bench.tune_kernels chose the interpreter
    case = Case("demo", "stand-in", module, "tiles", (2, 3, 4, 1), make_run, tile_arg=0)
    written = []
    tune_kernels.tune(case, torch.device("cpu"), written.append)
    status = {r["candidate"]: r["status"] for r in written}
    assert status[1] == status[2] == "ok"
    assert status[3].startswith("WRONG") and status[4].startswith("failed: RuntimeError")
    assert {r["candidate"] for r in written if r["ms"] is None} == {3, 4}
    assert module.tiles(0) == 1  # the original tile function is back
    line = next(line for line in capsys.readouterr().out.splitlines() if "stand-in" in line)
    assert "best 1 " in line


def test_timed_runs_take_enough_weight_copies_in_turn_to_miss_l2(monkeypatch):
    """Four L2s between two reads of one copy (a 50 MB L2 here), at most 64 copies, one on the CPU."""
    from types import SimpleNamespace

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(L2_cache_size=50 << 20))
    kernel_inputs = importlib.import_module("bench.kernel_inputs")
    cuda = torch.device("cuda")
    assert kernel_inputs.copies(2816 * 4096, cuda) == 19  # the 26B-A4B's o_proj in e4m3: 11.5 MB
    assert kernel_inputs.copies(43008 * 5376 * 2, cuda) == 1  # the 31B's gate_up in bf16: 462 MB
    assert kernel_inputs.copies(1, cuda) == 64
    assert kernel_inputs.copies(1, torch.device("cpu")) == 1
    turn = kernel_inputs.in_turn(["a", "b", "c"])
    assert [turn() for _ in range(7)] == ["a", "b", "c", "a", "b", "c", "a"]


def test_shapes_keeps_only_the_cases_it_names(tmp_path):
    results = tmp_path / "tune.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.tune_kernels",
            "--dry-run",
            "--results",
            str(results),
            "--kernels",
            "w8a16,gemv",
            "--shapes",
            "M=5,M=9",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {json.loads(line)["shape"] for line in results.read_text().splitlines()} == {"tiny [96x128] M=5"}
    assert "1 cases" in proc.stdout
