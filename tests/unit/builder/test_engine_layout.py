"""Engine builder: tiny HF checkpoints -> engine folders, checked against engines/README.md (engine.json,
every weight's name, shape, dtype and value against the HF sources), sharding, config variants."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors import safe_open

from engine_builder.convert import build_engine
from engine_builder.errors import BuildError
from engine_builder.tiny.random_checkpoint import make_tiny_checkpoint
from engine_builder.tiny.tokenizer import TINY_VOCAB_SIZE
from gemma_runtime.engine_format.spec import EngineSpec
from tests.unit.builder.conftest import (
    DTYPES,
    LM,
    assert_nothing_left,
    copy_checkpoint,
    edit_config,
    engine_tensors,
    expected_engine_tensors,
    hf_tensors,
    tokenizer_id,
)

# ---------------------------------------------------------------- tiny checkpoints


@pytest.mark.parametrize("kind", ["moe", "dense"])
def test_tiny_checkpoint_is_a_real_hf_model_with_perturbed_weights(ckpts, kind):
    from transformers import AutoTokenizer, Gemma4ForConditionalGeneration

    folder = ckpts[kind]
    model = Gemma4ForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(folder))
    cfg, tc = model.config, model.config.text_config
    assert tc.vocab_size == TINY_VOCAB_SIZE and len(tok) <= TINY_VOCAB_SIZE
    assert tc.layer_types == ["sliding_attention", "sliding_attention", "full_attention"] * 2
    assert tc.enable_moe_block is (kind == "moe") and tc.attention_k_eq_v and tc.final_logit_softcapping == 30.0
    assert tc.use_bidirectional_attention == "vision" and tc.hidden_size_per_layer_input == 0
    assert tc.rope_parameters["full_attention"]["rope_type"] == "proportional"
    ids = {
        t: tok.convert_tokens_to_ids(t)
        for t in [
            "<|image>",
            "<image|>",
            "<|image|>",
            "<|video|>",
            "<eos>",
            "<turn|>",
            "<bos>",
            "<pad>",
            "<|tool_response>",
        ]
    }
    assert (cfg.boi_token_id, cfg.eoi_token_id, cfg.image_token_id, cfg.video_token_id) == (
        ids["<|image>"],
        ids["<image|>"],
        ids["<|image|>"],
        ids["<|video|>"],
    )
    assert (
        list(tc.eos_token_id) == [ids["<eos>"], ids["<turn|>"]]
        and tc.bos_token_id == ids["<bos>"]
        and tc.pad_token_id == ids["<pad>"]
    )
    gen = json.loads((folder / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [ids["<eos>"], ids["<turn|>"], ids["<|tool_response>"]]
    assert (gen["do_sample"], gen["temperature"], gen["top_p"], gen["top_k"]) == (True, 1.0, 0.95, 64)
    assert (folder / "chat_template.jinja").read_text() == tok.chat_template
    sd = model.state_dict()
    # HF initialises these to ones/zeros: every one of them must have been perturbed
    for name, t in sd.items():
        if name.endswith(("norm.weight", "layer_scalar", "router.scale", "per_expert_scale", "std_scale", "std_bias")):
            center = 0.0 if name.endswith("std_bias") else 1.0
            assert not torch.allclose(t, torch.full_like(t, center)), name
            assert t.numel() == 1 or t.std() > 0, name
    if kind == "moe":
        assert sd[LM + "layers.2.experts.gate_up_proj"].shape == (8, 64, 64)
    else:
        assert not any("experts" in n or "router" in n for n in sd)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[ids["<bos>"], 40, 41, 42, 43]])).logits
    assert torch.isfinite(logits).all() and logits.std() > 0.1


def test_tiny_checkpoint_is_deterministic_under_seed(tmp_path):
    a = hf_tensors(make_tiny_checkpoint(tmp_path / "a", seed=3, num_layers=3, with_vision=False))
    b = hf_tensors(make_tiny_checkpoint(tmp_path / "b", seed=3, num_layers=3, with_vision=False))
    c = hf_tensors(make_tiny_checkpoint(tmp_path / "c", seed=4, num_layers=3, with_vision=False))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a[LM + "norm.weight"], c[LM + "norm.weight"])
    assert not any(k.startswith("model.vision_tower.") for k in a)


# ---------------------------------------------------------------- engines


@pytest.mark.parametrize("kind", ["moe", "dense"])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_engine_json(ckpts, engines, kind, dtype):
    folder, engine = ckpts[kind], engines[(kind, dtype)]
    assert engine.name == f"tiny-{kind}-{dtype}"
    config = json.loads((folder / "config.json").read_text())
    tc = config["text_config"]
    raw = json.loads((engine / "engine.json").read_text())
    assert (
        raw["format_version"] == 1
        and raw["quantization"] is None
        and raw["architecture"] == "Gemma4ForConditionalGeneration"
    )
    spec = EngineSpec.load(engine)
    assert spec.dtype == dtype and spec.model_name == f"tiny-{kind}"
    assert spec.max_model_len == min(tc["max_position_embeddings"], 32768)
    assert spec.source["checkpoint"] == str(folder.resolve()) and len(spec.source["sha256"]) == 64
    t = spec.text
    assert (t.vocab_size, t.hidden_size, t.num_layers, t.num_attention_heads, t.intermediate_size) == (
        tc["vocab_size"],
        tc["hidden_size"],
        tc["num_hidden_layers"],
        tc["num_attention_heads"],
        tc["intermediate_size"],
    )
    assert t.sliding_window == 8 and t.final_logit_softcapping == 30.0 and t.rms_norm_eps == tc["rms_norm_eps"]
    assert t.embed_scale == torch.tensor(math.sqrt(64), dtype=DTYPES[dtype]).item()
    for i, layer in enumerate(t.layers):
        full = tc["layer_types"][i] == "full_attention"
        assert layer.type == ("full" if full else "sliding")
        assert (layer.head_dim, layer.num_kv_heads, layer.k_eq_v) == ((32, 1, True) if full else (16, 2, False))
        assert layer.rope_theta == (1e6 if full else 1e4)
        assert layer.rope_angles == (int(0.25 * 32 / 2) if full else 16 // 2)
    assert [layer.type for layer in t.layers] == ["sliding", "sliding", "full", "sliding", "sliding", "full"]
    if kind == "moe":
        assert (t.moe.num_experts, t.moe.top_k, t.moe.intermediate_size) == (8, 2, 32)
    else:
        assert t.moe is None
    v = spec.vision
    assert (
        v.hidden_size,
        v.num_layers,
        v.head_dim,
        v.patch_size,
        v.pooling_kernel_size,
        v.standardize,
        v.rope_theta,
    ) == (32, 2, 16, 16, 3, True, 100.0)
    mm = spec.multimodal
    assert (mm.image_token_id, mm.boi_token_id, mm.eoi_token_id, mm.video_token_id) == tuple(
        tokenizer_id(folder, s) for s in ("<|image|>", "<|image>", "<image|>", "<|video|>")
    )
    ids = {s: tokenizer_id(folder, s) for s in ("<eos>", "<turn|>", "<|tool_response>", "<bos>", "<pad>")}
    assert (spec.tokens.bos_token_id, spec.tokens.eos_token_id, spec.tokens.pad_token_id) == (
        ids["<bos>"],
        ids["<eos>"],
        ids["<pad>"],
    )
    assert spec.stop_token_ids == (ids["<eos>"], ids["<turn|>"], ids["<|tool_response>"])
    gen = json.loads((engine / "generation_config.json").read_text())
    assert gen["eos_token_id"] == list(spec.stop_token_ids) and gen["top_k"] == 64 and gen["top_p"] == 0.95
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        assert (engine / f).read_bytes() == (folder / f).read_bytes(), f


@pytest.mark.parametrize("kind", ["moe", "dense"])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_engine_weights_match_layout_and_hf_sources(ckpts, engines, kind, dtype):
    folder, engine = ckpts[kind], engines[(kind, dtype)]
    config = json.loads((folder / "config.json").read_text())
    got = engine_tensors(engine)
    want = expected_engine_tensors(hf_tensors(folder), config)
    assert sorted(got) == sorted(want)
    spec = EngineSpec.load(engine)
    H, nq = spec.text.hidden_size, spec.text.num_attention_heads
    for i, layer in enumerate(spec.text.layers):  # shapes straight from the README table
        kv_rows = (1 if layer.k_eq_v else 2) * layer.num_kv_heads
        assert got[f"layers.{i}.attn.qkv_proj.weight"].shape == ((nq + kv_rows) * layer.head_dim, H)
        assert got[f"layers.{i}.attn.o_proj.weight"].shape == (H, nq * layer.head_dim)
        assert got[f"layers.{i}.attn.q_norm.weight"].shape == (layer.head_dim,)
        assert got[f"layers.{i}.mlp.gate_up_proj.weight"].shape == (2 * spec.text.intermediate_size, H)
        assert got[f"layers.{i}.layer_scalar"].shape == (1,)
        if spec.text.moe:
            E, Ie = spec.text.moe.num_experts, spec.text.moe.intermediate_size
            assert got[f"layers.{i}.moe.gate_up_proj"].shape == (E, 2 * Ie, H)
            assert got[f"layers.{i}.moe.down_proj"].shape == (E, H, Ie)
            assert got[f"layers.{i}.moe.router_proj.weight"].shape == (E, H)
    assert got["embed_tokens.weight"].shape == (spec.text.vocab_size, H)
    assert got["vision.embedding_projection.weight"].shape == (H, spec.vision.hidden_size)
    for name, t in got.items():
        assert t.dtype == DTYPES[dtype], name
        assert t.shape == want[name].shape, name
        torch.testing.assert_close(
            t, want[name].to(DTYPES[dtype]), rtol=0, atol=0, msg=name
        ) if dtype == "float32" else torch.testing.assert_close(
            t.float(), want[name].float(), rtol=8e-3, atol=1e-6, msg=name
        )
    # the fold really happened: the scaled experts differ from the raw HF ones
    if kind == "moe":
        raw = hf_tensors(folder)[LM + "layers.0.experts.down_proj"]
        assert not torch.allclose(got["layers.0.moe.down_proj"].float(), raw, atol=1e-3)


def test_sharded_checkpoint_input_and_sharded_engine_output(ckpts, engines, tmp_path):
    index = json.loads((ckpts["moe_sharded"] / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    engine = build_engine(ckpts["moe_sharded"], tmp_path, dtype="float32", progress=False, max_shard_bytes=256 * 1024)
    out_index = json.loads((engine / "model.safetensors.index.json").read_text())
    shards = sorted(set(out_index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (engine / "model.safetensors").exists()
    for s in shards:  # bounded, unless one tensor alone is larger than the bound
        names = [n for n, f in out_index["weight_map"].items() if f == s]
        with safe_open(str(engine / s), framework="pt") as h:
            data = sum(h.get_tensor(n).numel() * 4 for n in names)
        assert data <= 256 * 1024 or len(names) == 1, (s, data)
    got, ref = engine_tensors(engine), engine_tensors(engines[("moe", "float32")])  # same seed, unsharded
    assert out_index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in got.values())
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in got)
    assert EngineSpec.load(engine).source["sha256"] != EngineSpec.load(engines[("moe", "float32")]).source["sha256"]


def test_text_only_checkpoint_and_max_model_len(tmp_path):
    folder = make_tiny_checkpoint(tmp_path / "ckpt", kind="dense", num_layers=4, sliding_window=4, with_vision=False)
    engine = build_engine(folder, tmp_path / "out", dtype="bf16", name="custom", max_model_len=1000, progress=False)
    spec = EngineSpec.load(engine)
    assert engine.name == "custom" and spec.dtype == "bfloat16" and spec.max_model_len == 1000
    assert spec.vision is None and spec.multimodal is None and spec.text.sliding_window == 4
    assert [layer.type for layer in spec.text.layers] == ["sliding", "sliding", "full", "full"]
    assert not any(n.startswith("vision.") for n in engine_tensors(engine))
    with pytest.raises(BuildError, match="max-model-len 999999 must be between 1 and max_position_embeddings"):
        build_engine(folder, tmp_path / "out2", dtype="bf16", max_model_len=999_999, progress=False)
    assert_nothing_left(tmp_path / "out2")


def test_many_layers_per_layer_config_keys(tmp_path):
    # transformers zero-pads per_layer_config keys ("05") from 10 layers on; the spec must still find them
    folder = make_tiny_checkpoint(tmp_path / "ckpt", kind="moe", num_layers=12, with_vision=False)
    assert "05" in json.loads((folder / "config.json").read_text())["text_config"]["per_layer_config"]
    spec = EngineSpec.load(build_engine(folder, tmp_path / "out", dtype="float32", progress=False))
    full = [i for i, layer in enumerate(spec.text.layers) if layer.type == "full"]
    assert full == [2, 5, 8, 11]
    assert all(
        (layer.head_dim, layer.num_kv_heads) == ((32, 1) if i in full else (16, 2))
        for i, layer in enumerate(spec.text.layers)
    )


def test_released_config_format(ckpts, engines, tmp_path):
    # the released config.json names global_head_dim / num_global_key_value_heads instead of per_layer_config
    folder = copy_checkpoint(ckpts["moe"], tmp_path / "ckpt")
    tc = json.loads((folder / "config.json").read_text())["text_config"]
    released = {k: v for k, v in tc.items() if k != "per_layer_config"} | {
        "global_head_dim": 32,
        "num_global_key_value_heads": 1,
    }
    edit_config(folder, text_config=released)
    spec = EngineSpec.load(build_engine(folder, tmp_path / "out", dtype="float32", progress=False))
    assert spec.text == EngineSpec.load(engines[("moe", "float32")]).text


def test_rebuild_replaces_the_engine(ckpts, tmp_path):
    first = build_engine(ckpts["dense"], tmp_path, dtype="float32", progress=False)
    (first / "stale.txt").write_text("old")
    second = build_engine(ckpts["dense"], tmp_path, dtype="float32", progress=False)
    assert first == second and not (second / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [second.name]


def test_chat_template_from_tokenizer_config_when_no_jinja(ckpts, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(ckpts["dense"], folder)
    template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (folder / "chat_template.jinja").unlink()
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**tc, "chat_template": template}))
    engine = build_engine(folder, tmp_path / "out", dtype="float32", progress=False)
    assert (engine / "chat_template.jinja").read_text() == template
    (folder / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in tc.items() if k != "chat_template"}))
    with pytest.raises(BuildError, match="has no chat template"):
        build_engine(folder, tmp_path / "out2", dtype="float32", progress=False)
    assert_nothing_left(tmp_path / "out2")
