"""Engine builder: one clear line for every bad input, nothing left behind by a failure, the CLI, and
conversion memory that stays far below the checkpoint size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine_builder.convert import build_engine
from engine_builder.errors import BuildError
from gemma_runtime.engine_format.spec import EngineSpec
from tests.unit.builder.conftest import assert_nothing_left, copy_checkpoint, edit_config

# ---------------------------------------------------------------- bad input


BAD_INPUTS = {
    "missing shard": (
        lambda f: next(f.glob("model-00002-*.safetensors")).unlink(),
        r"shard model-00002-of-\d+\.safetensors named in model\.safetensors\.index\.json is missing",
    ),
    "wrong architecture": (
        lambda f: edit_config(f, architectures=["LlamaForCausalLM"]),
        r"architectures \['LlamaForCausalLM'\] do not include Gemma4ForConditionalGeneration",
    ),
    "wrong model_type": (lambda f: edit_config(f, model_type="gemma3"), r"model_type is 'gemma3', expected 'gemma4'"),
    "missing tokenizer": (
        lambda f: (f / "tokenizer.json").unlink(),
        r"has no tokenizer\.json: the tokenizer is missing",
    ),
    "missing config": (
        lambda f: (f / "config.json").unlink(),
        r"has no config\.json: not a Hugging Face checkpoint folder",
    ),
    "missing weights": (
        lambda f: [p.unlink() for p in f.glob("model*")],
        r"has no model\.safetensors nor model\.safetensors\.index\.json",
    ),
    "config disagrees": (
        lambda f: edit_config(
            f, text_config={**json.loads((f / "config.json").read_text())["text_config"], "hidden_size": 32}
        ),
        r"embed_tokens\.weight: shape \[512, 64\] does not match config\.json \(expected \[512, 32\]\)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_checkpoint_gets_one_clear_line(ckpts, tmp_path, case):
    folder = copy_checkpoint(ckpts["moe_sharded"], tmp_path / "ckpt")
    damage, message = BAD_INPUTS[case]
    damage(folder)
    with pytest.raises(BuildError, match=message) as err:
        build_engine(folder, tmp_path / "out", dtype="float32", progress=False)
    assert isinstance(err.value, SystemExit) and "\n" not in str(err.value)
    assert_nothing_left(tmp_path / "out")


@pytest.mark.parametrize(("dtype", "message"), [("int4", r"unknown dtype 'int4'")])
def test_bad_dtype(ckpts, tmp_path, dtype, message):
    with pytest.raises(BuildError, match=message):
        build_engine(ckpts["dense"], tmp_path / "out", dtype=dtype, progress=False)
    assert_nothing_left(tmp_path / "out")


def test_unknown_model_and_offline_hub(tmp_path, monkeypatch):
    with pytest.raises(BuildError, match="neither tiny, 26b, 31b, an existing folder, nor a hub id"):
        build_engine("./no/such/folder/here", tmp_path, progress=False)
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []

    def offline(repo_id, **kw):  # what snapshot_download raises with no network and no cache
        calls.append(repo_id)
        raise LocalEntryNotFoundError("Got: ConnectError: [Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(
        BuildError, match=r"^cannot download google/gemma-4-26b-a4b-it: the Hugging Face Hub is unreachable"
    ):
        build_engine("26b", tmp_path, progress=False)
    with pytest.raises(BuildError, match="cannot download someone/some-model"):
        build_engine("someone/some-model", tmp_path, dtype="bf16", progress=False)
    assert calls == ["google/gemma-4-26b-a4b-it", "someone/some-model"]
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_failure_mid_write_leaves_nothing(ckpts, tmp_path, monkeypatch, exc):
    import engine_builder.convert as convert

    real, seen = convert.materialize, []

    def failing(ckpt, t, dtype):
        seen.append(t.name)
        if len(seen) == 20:
            raise exc
        return real(ckpt, t, dtype)

    monkeypatch.setattr(convert, "materialize", failing)
    with pytest.raises(type(exc)):
        build_engine(ckpts["moe"], tmp_path / "out", dtype="float32", progress=False)
    assert len(seen) == 20
    assert_nothing_left(tmp_path / "out")


# ---------------------------------------------------------------- CLI


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine_builder", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_cli_builds_tiny(tmp_path):
    proc = _cli("--model", "tiny", "--out-dir", "engines", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    engine = tmp_path / "engines" / "gemma-4-tiny-it-float32"
    spec = EngineSpec.load(engine)
    assert spec.model_name == "google/gemma-4-tiny-it" and spec.dtype == "float32" and spec.text.moe is not None
    assert spec.source["checkpoint"] == "tiny"
    assert sorted(p.name for p in (tmp_path / "engines").iterdir()) == ["gemma-4-tiny-it-float32"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--model", "tiny", "--dtype", "int3"), "unknown dtype 'int3'"),
        (("--model", "missing-folder"), "is neither tiny"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, args, message):
    proc = _cli(*args, "--out-dir", "engines", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr and "Traceback" not in proc.stderr
    assert_nothing_left(tmp_path / "engines")


# ---------------------------------------------------------------- memory


@pytest.mark.skipif(
    not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs to reset peak RSS"
)
def test_conversion_peak_memory_is_bounded(tmp_path):
    from engine_builder.tools.memcheck import measure_conversion, write_random_checkpoint

    # ~46 MB float32 checkpoint, largest tensor 2 MB: holding the checkpoint (or a shard of it) would show
    folder, size = write_random_checkpoint(
        tmp_path / "ckpt", num_layers=8, dtype=torch.float32, shard_bytes=16 * 1024**2
    )
    assert size > 40 * 1024**2
    result = measure_conversion(folder, tmp_path / "out", dtype="bfloat16", shard_bytes=16 * 1024**2)
    engine = Path(result["engine"])
    assert EngineSpec.load(engine).dtype == "bfloat16"
    assert result["peak_growth"] < size / 2, result
