"""The MTP drafter in the engine folder: `--assistant <folder>` round-trips every tensor into assistant/,
FP8 engines keep it in bfloat16, and what cannot be had (offline `auto`, a drafter for another model)
is one line with nothing left behind."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine_builder.checkpoint import load_config
from engine_builder.convert import build_engine
from engine_builder.errors import BuildError
from engine_builder.spec import text_spec
from engine_builder.tiny.random_assistant import make_random_assistant
from engine_builder.tiny.random_checkpoint import make_tiny_checkpoint
from gemma_runtime.engine_format.spec import EngineSpec
from tests.unit.builder.conftest import assert_nothing_left, engine_tensors, hf_tensors


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("t") / "tiny", kind="dense", seed=4, with_vision=False)


@pytest.fixture(scope="module")
def drafter(target, tmp_path_factory) -> Path:
    spec = text_spec(load_config(target), "float32")
    return make_random_assistant(tmp_path_factory.mktemp("d") / "drafter", spec, seed=5, ordered_embeddings=True)


def expected_drafter_tensors(hf: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """engines/README.md's drafter table, written out independently of engine_builder.assistant."""
    out = {
        "pre_projection.weight": hf["pre_projection.weight"],
        "post_projection.weight": hf["post_projection.weight"],
        "lm_head.weight": hf.get("lm_head.weight", hf["model.embed_tokens.weight"]),
        "norm.weight": hf["model.norm.weight"],
        "masked_embedding.centroids.weight": hf["masked_embedding.centroids.weight"],
        "masked_embedding.token_ordering": hf["masked_embedding.token_ordering"],
    }
    for i in range(layers):
        p, o = f"model.layers.{i}.", f"layers.{i}."
        for mine, theirs in [
            ("attn.q_proj.weight", "self_attn.q_proj.weight"),
            ("attn.q_norm.weight", "self_attn.q_norm.weight"),
            ("attn.o_proj.weight", "self_attn.o_proj.weight"),
            ("input_norm.weight", "input_layernorm.weight"),
            ("post_attn_norm.weight", "post_attention_layernorm.weight"),
            ("pre_ffn_norm.weight", "pre_feedforward_layernorm.weight"),
            ("post_ffn_norm.weight", "post_feedforward_layernorm.weight"),
            ("layer_scalar", "layer_scalar"),
            ("mlp.down_proj.weight", "mlp.down_proj.weight"),
        ]:
            out[o + mine] = hf[p + theirs]
        out[o + "mlp.gate_up_proj.weight"] = torch.cat([hf[p + "mlp.gate_proj.weight"], hf[p + "mlp.up_proj.weight"]])
    return out


def test_folder_round_trips(target, drafter, tmp_path):
    engine = build_engine(str(target), tmp_path, dtype="float32", progress=False, assistant=str(drafter))
    spec = EngineSpec.load(engine)
    a = spec.assistant
    assert a is not None and a.folder == "assistant" and a.checkpoint == str(drafter.resolve())
    assert a.dtype == "float32" and a.backbone_hidden_size == spec.text.hidden_size
    assert [layer.type for layer in a.text.layers] == ["sliding", "sliding", "full"]
    assert (a.ordered_embeddings.num_centroids, a.ordered_embeddings.top_k) == (8, 2)
    ours = engine_tensors(engine / "assistant")
    want = expected_drafter_tensors(hf_tensors(drafter), len(a.text.layers))
    assert sorted(ours) == sorted(want)
    for name, t in want.items():
        assert ours[name].dtype == t.dtype and torch.equal(ours[name], t), name


def test_fp8_engine_keeps_the_drafter_in_bf16(target, drafter, tmp_path):
    engine = build_engine(str(target), tmp_path, dtype="fp8", progress=False, assistant=str(drafter))
    spec = EngineSpec.load(engine)
    assert spec.quantization is not None and spec.assistant.dtype == "bfloat16"
    ours = engine_tensors(engine / "assistant")
    assert {t.dtype for t in ours.values()} == {torch.bfloat16, torch.int64}  # token_ordering stays int64
    assert not any(m.startswith(("pre_projection", "post_projection")) for m in spec.quantization.modules)


def test_dims_mismatch_is_one_line(target, tmp_path):
    spec = text_spec(load_config(target), "float32")
    other = make_random_assistant(tmp_path / "other", dataclasses.replace(spec, hidden_size=32))
    with pytest.raises(BuildError) as err:
        build_engine(str(target), tmp_path / "engines", dtype="float32", progress=False, assistant=str(other))
    assert str(err.value) == "the drafter was trained on hidden size 32, the target has 64"
    layers = tuple(dataclasses.replace(layer, head_dim=layer.head_dim * 2) for layer in spec.layers)
    wide = make_random_assistant(tmp_path / "wide", dataclasses.replace(spec, layers=layers))
    with pytest.raises(
        BuildError, match=r"^drafter layer 0 \(sliding\) expects head_dim 32 with 2 KV heads, the target"
    ):
        build_engine(str(target), tmp_path / "engines", dtype="float32", progress=False, assistant=str(wide))
    assert_nothing_left(tmp_path / "engines")


def test_auto_offline_is_one_line(target, tmp_path):
    """A local copy of the 26B-A4B (by its folder name) asks for google/gemma-4-26b-a4b-it-assistant."""
    local = shutil.copytree(target, tmp_path / "gemma-4-26b-a4b-it")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    args = ["--model", str(local), "--assistant", "auto", "--out-dir", "engines", "--no-progress"]
    proc = subprocess.run(
        [sys.executable, "-m", "engine_builder", *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "cannot download google/gemma-4-26b-a4b-it-assistant" in proc.stderr
    assert_nothing_left(tmp_path / "engines")


def test_auto_for_tiny_names_random(tmp_path):
    with pytest.raises(BuildError, match="the tiny model has no published drafter; use --assistant random"):
        build_engine("tiny", tmp_path, assistant="auto")
    assert_nothing_left(tmp_path)
