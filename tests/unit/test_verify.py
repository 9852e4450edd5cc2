"""`make verify` (bench/verify) on the tiny taught engines: it passes on correct float32, bf16 and FP8
engines, fails on a copy with one weight scaled, and answers the user's mistakes in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from bench.verify.__main__ import main
from engine_builder.convert import build_engine
from tests.conftest import REPO_ROOT

# q_norm scales the queries after their RMSNorm: attention sharpens. (A whole o_proj or down_proj scaled
# would change nothing: the post-attention and post-feedforward norms divide a uniform scale back out.)
CORRUPTED = "layers.1.attn.q_norm.weight"


@pytest.fixture(scope="module")
def engines(taught_checkpoint_dir, tmp_path_factory) -> dict:
    """float32, bf16 and fp8 engines of the taught checkpoint, built from its folder (engine.json records it)."""
    out = tmp_path_factory.mktemp("verify-engines")
    return {
        d: build_engine(str(taught_checkpoint_dir), out, dtype=d, progress=False) for d in ("float32", "bf16", "fp8")
    }


def corrupted_copy(engine, dst, scale: float):
    shutil.copytree(engine, dst)
    weights = load_file(dst / "model.safetensors")
    weights[CORRUPTED] = weights[CORRUPTED] * scale
    save_file(weights, dst / "model.safetensors")
    return dst


@pytest.mark.parametrize("dtype", ["float32", "bf16", "fp8"])
def test_a_correct_engine_passes_against_the_checkpoint_engine_json_names(engines, dtype, capsys):
    assert main(["--engine", str(engines[dtype]), "--steps", "8"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("  ")[0]: line for line in out.splitlines()}
    assert all(rows[p].endswith("pass") for p in ("text", "thinking", "tool call", "image")), out
    assert "perplexity on the fixed text" in out and out.rstrip().splitlines()[-1].startswith("verify passed")
    if dtype == "float32":  # rounding only: every position agrees and the logits match to 1e-3 of their range
        assert "100.0% of" in rows["tool call"] and "perplexity change within ±0.1%" in out


@pytest.mark.parametrize("dtype,scale", [("float32", 3.0), ("bf16", 3.0)])
def test_an_engine_with_one_weight_scaled_fails(engines, dtype, scale, tmp_path, capsys):
    bad = corrupted_copy(engines[dtype], tmp_path / "bad", scale)
    assert main(["--engine", str(bad), "--steps", "8"]) == 1
    captured = capsys.readouterr()
    line = captured.err.strip().splitlines()[-1]  # one clear line says why, last
    assert line.startswith(f"verify FAILED: {bad} against ") and "top-1 agreement" in line
    assert "FAIL" in captured.out


def test_an_fp8_engine_with_one_layers_rows_out_of_order_fails(engines, tmp_path, capsys):
    """A layout bug in one FP8 weight (layer 1's fused QKV rows out of order, e4m3 bytes and all) fails.
    A scale off by a factor (x2 to x8, or lost) passes on this model: its own FP8 rounding already moves
    its logits as far (hidden 64: 54-83% top-1 over all positions, perplexity -2.3%), see thresholds.py."""
    bad = tmp_path / "bad-fp8"
    shutil.copytree(engines["fp8"], bad)
    weights = load_file(bad / "model.safetensors")
    qkv = weights["layers.1.attn.qkv_proj.weight"]
    assert qkv.dtype == torch.float8_e4m3fn
    weights["layers.1.attn.qkv_proj.weight"] = qkv[
        torch.randperm(qkv.shape[0], generator=torch.Generator().manual_seed(0))
    ]
    save_file(weights, bad / "model.safetensors")
    assert main(["--engine", str(bad), "--steps", "8"]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1].startswith(f"verify FAILED: {bad} against ")
    assert "FAIL" in captured.out


def test_user_mistakes_are_one_line(engines, tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        main(["--engine", str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match="REFERENCE=.*does not exist"):
        main(["--engine", str(engines["float32"]), "--reference", str(tmp_path / "no-checkpoint")])
    with pytest.raises(SystemExit, match="not a Hugging Face Gemma 4 checkpoint"):
        main(["--engine", str(engines["float32"]), "--reference", str(tmp_path)])
    # built by `make engine MODEL=tiny`: its checkpoint was temporary, so REFERENCE must be given
    tiny = shutil.copytree(engines["float32"], tmp_path / "tiny-engine")
    meta = json.loads((tiny / "engine.json").read_text())
    (tiny / "engine.json").write_text(json.dumps({**meta, "source": {"checkpoint": "tiny", "sha256": "x"}}))
    with pytest.raises(SystemExit, match="pass REFERENCE="):
        main(["--engine", str(tiny)])


def test_an_unmatched_reference_is_refused_in_one_line_without_a_traceback(engines, tmp_path):
    from engine_builder.tiny.random_checkpoint import make_tiny_checkpoint

    other = make_tiny_checkpoint(tmp_path / "other", kind="dense", seed=5, sliding_window=8, with_vision=False)
    env = dict(os.environ, PYTHONPATH=f"{REPO_ROOT}:{REPO_ROOT / 'build'}")
    run = subprocess.run(
        [sys.executable, "-m", "bench.verify", "--engine", str(engines["fp8"]), "--reference", str(other)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith(f"error: REFERENCE={other} is not the checkpoint") and "--any-checkpoint" in line


def test_one_prompt_fails_on_evidence_not_on_three_flips():
    """A prompt's few dozen positions: 26 of 29 (89.7%) is what a 90% engine gives more often than not;
    20 of 29 is below 90% beyond doubt. The share itself is judged over all prompts together."""
    from bench.verify.compare import PooledFigures, agreement_upper_bound, pooled_figures
    from bench.verify.thresholds import THRESHOLDS

    assert agreement_upper_bound(26, 29) >= 0.90 > agreement_upper_bound(20, 29)
    assert agreement_upper_bound(0, 0) == 1.0 and agreement_upper_bound(10, 10) == 1.0
    assert 0.9 < agreement_upper_bound(900, 1000) < 0.92  # many positions: close to the share itself

    class Row:  # the two fields pooled_figures reads
        def __init__(self, agree, n):
            self.decisive_agree, self.decisive = agree, n

    fp8 = THRESHOLDS["fp8"]
    assert pooled_figures([Row(26, 29), Row(40, 40)], fp8) == PooledFigures(66, 69, ())
    bad = pooled_figures([Row(26, 29), Row(30, 40)], fp8)
    assert bad.failures and "81.2% of 69 < 90%" in bad.failures[0]
