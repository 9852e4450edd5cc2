"""Engine builder: tiny HF checkpoints -> engine folders, checked against engines/README.md and the HF tensors."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from engine_builder.convert import build_engine
from engine_builder.errors import BuildError
from engine_builder.tiny_checkpoint import make_tiny_checkpoint
from engine_builder.tiny_tokenizer import TINY_VOCAB_SIZE
from gemma_runtime.engine_config import EngineSpec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
LM = "model.language_model."


# ---------------------------------------------------------------- helpers


def hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def engine_tensors(engine: Path) -> dict[str, torch.Tensor]:
    index = engine / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    out: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(engine / f), framework="pt") as h:  # the real safetensors reader accepts our files
            out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


def expected_engine_tensors(hf: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """The README's weight table, written out independently of engine_builder.weights."""
    tc = config["text_config"]
    k_eq_v = tc["attention_k_eq_v"]
    out = {"embed_tokens.weight": hf[LM + "embed_tokens.weight"], "norm.weight": hf[LM + "norm.weight"]}
    for i, kind in enumerate(tc["layer_types"]):
        p, o = f"{LM}layers.{i}.", f"layers.{i}."
        qkv = [hf[p + "self_attn.q_proj.weight"], hf[p + "self_attn.k_proj.weight"]]
        if not (k_eq_v and kind == "full_attention"):
            qkv.append(hf[p + "self_attn.v_proj.weight"])
        else:
            assert p + "self_attn.v_proj.weight" not in hf
        out[o + "attn.qkv_proj.weight"] = torch.cat(qkv)
        out[o + "attn.q_norm.weight"] = hf[p + "self_attn.q_norm.weight"]
        out[o + "attn.k_norm.weight"] = hf[p + "self_attn.k_norm.weight"]
        out[o + "attn.o_proj.weight"] = hf[p + "self_attn.o_proj.weight"]
        out[o + "input_norm.weight"] = hf[p + "input_layernorm.weight"]
        out[o + "post_attn_norm.weight"] = hf[p + "post_attention_layernorm.weight"]
        out[o + "pre_ffn_norm.weight"] = hf[p + "pre_feedforward_layernorm.weight"]
        out[o + "post_ffn_norm.weight"] = hf[p + "post_feedforward_layernorm.weight"]
        out[o + "layer_scalar"] = hf[p + "layer_scalar"]
        out[o + "mlp.gate_up_proj.weight"] = torch.cat([hf[p + "mlp.gate_proj.weight"], hf[p + "mlp.up_proj.weight"]])
        out[o + "mlp.down_proj.weight"] = hf[p + "mlp.down_proj.weight"]
        if tc.get("enable_moe_block"):
            out[o + "moe.router_proj.weight"] = hf[p + "router.proj.weight"]
            out[o + "moe.router_scale"] = hf[p + "router.scale"]
            out[o + "moe.gate_up_proj"] = hf[p + "experts.gate_up_proj"]
            scale = hf[p + "router.per_expert_scale"]
            out[o + "moe.down_proj"] = torch.stack([hf[p + "experts.down_proj"][e] * scale[e] for e in range(scale.numel())])
            out[o + "moe.pre_norm.weight"] = hf[p + "pre_feedforward_layernorm_2.weight"]
            out[o + "moe.post_norm_dense.weight"] = hf[p + "post_feedforward_layernorm_1.weight"]
            out[o + "moe.post_norm_experts.weight"] = hf[p + "post_feedforward_layernorm_2.weight"]
    for name, t in hf.items():
        if name.startswith("model.vision_tower."):
            out["vision." + name[len("model.vision_tower.") :].replace(".linear.weight", ".weight")] = t
    if "model.embed_vision.embedding_projection.weight" in hf:
        out["vision.embedding_projection.weight"] = hf["model.embed_vision.embedding_projection.weight"]
    return out


def tokenizer_id(folder: Path, token: str) -> int:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder)).convert_tokens_to_ids(token)


def assert_nothing_left(out_dir: Path) -> None:
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {
        "moe": make_tiny_checkpoint(root / "tiny-moe", kind="moe", seed=1),
        "dense": make_tiny_checkpoint(root / "tiny-dense", kind="dense", seed=2),
        "moe_sharded": make_tiny_checkpoint(root / "tiny-moe-sharded", kind="moe", seed=1, max_shard_size="300KB"),
    }


@pytest.fixture(scope="module")
def engines(ckpts, tmp_path_factory) -> dict[tuple[str, str], Path]:
    out = tmp_path_factory.mktemp("engines")
    return {(k, d): build_engine(ckpts[k], out, dtype=d, progress=False) for k in ("moe", "dense") for d in DTYPES}


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
    ids = {t: tok.convert_tokens_to_ids(t) for t in ["<|image>", "<image|>", "<|image|>", "<|video|>", "<eos>", "<turn|>", "<bos>", "<pad>", "<|tool_response>"]}
    assert (cfg.boi_token_id, cfg.eoi_token_id, cfg.image_token_id, cfg.video_token_id) == (ids["<|image>"], ids["<image|>"], ids["<|image|>"], ids["<|video|>"])
    assert list(tc.eos_token_id) == [ids["<eos>"], ids["<turn|>"]] and tc.bos_token_id == ids["<bos>"] and tc.pad_token_id == ids["<pad>"]
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
    assert raw["format_version"] == 1 and raw["quantization"] is None and raw["architecture"] == "Gemma4ForConditionalGeneration"
    spec = EngineSpec.load(engine)
    assert spec.dtype == dtype and spec.model_name == f"tiny-{kind}"
    assert spec.max_model_len == min(tc["max_position_embeddings"], 32768)
    assert spec.source["checkpoint"] == str(folder.resolve()) and len(spec.source["sha256"]) == 64
    t = spec.text
    assert (t.vocab_size, t.hidden_size, t.num_layers, t.num_attention_heads, t.intermediate_size) == (
        tc["vocab_size"], tc["hidden_size"], tc["num_hidden_layers"], tc["num_attention_heads"], tc["intermediate_size"])  # fmt: skip
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
    assert (v.hidden_size, v.num_layers, v.head_dim, v.patch_size, v.pooling_kernel_size, v.standardize, v.rope_theta) == (32, 2, 16, 16, 3, True, 100.0)
    mm = spec.multimodal
    assert (mm.image_token_id, mm.boi_token_id, mm.eoi_token_id, mm.video_token_id) == tuple(
        tokenizer_id(folder, s) for s in ("<|image|>", "<|image>", "<image|>", "<|video|>"))  # fmt: skip
    ids = {s: tokenizer_id(folder, s) for s in ("<eos>", "<turn|>", "<|tool_response>", "<bos>", "<pad>")}
    assert (spec.tokens.bos_token_id, spec.tokens.eos_token_id, spec.tokens.pad_token_id) == (ids["<bos>"], ids["<eos>"], ids["<pad>"])
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
        torch.testing.assert_close(t, want[name].to(DTYPES[dtype]), rtol=0, atol=0, msg=name) if dtype == "float32" else \
            torch.testing.assert_close(t.float(), want[name].float(), rtol=8e-3, atol=1e-6, msg=name)  # fmt: skip
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
    assert all((layer.head_dim, layer.num_kv_heads) == ((32, 1) if i in full else (16, 2)) for i, layer in enumerate(spec.text.layers))


def test_released_config_format(ckpts, engines, tmp_path):
    # the released config.json names global_head_dim / num_global_key_value_heads instead of per_layer_config
    folder = _copy(ckpts["moe"], tmp_path / "ckpt")
    tc = json.loads((folder / "config.json").read_text())["text_config"]
    released = {k: v for k, v in tc.items() if k != "per_layer_config"} | {"global_head_dim": 32, "num_global_key_value_heads": 1}
    _edit_config(folder, text_config=released)
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


# ---------------------------------------------------------------- bad input


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **changes}))


BAD_INPUTS = {
    "missing shard": (lambda f: next(f.glob("model-00002-*.safetensors")).unlink(),
                      r"shard model-00002-of-\d+\.safetensors named in model\.safetensors\.index\.json is missing"),
    "wrong architecture": (lambda f: _edit_config(f, architectures=["LlamaForCausalLM"]),
                           r"architectures \['LlamaForCausalLM'\] do not include Gemma4ForConditionalGeneration"),
    "wrong model_type": (lambda f: _edit_config(f, model_type="gemma3"), r"model_type is 'gemma3', expected 'gemma4'"),
    "missing tokenizer": (lambda f: (f / "tokenizer.json").unlink(), r"has no tokenizer\.json: the tokenizer is missing"),
    "missing config": (lambda f: (f / "config.json").unlink(), r"has no config\.json: not a Hugging Face checkpoint folder"),
    "missing weights": (lambda f: [p.unlink() for p in f.glob("model*")], r"has no model\.safetensors nor model\.safetensors\.index\.json"),
    "config disagrees": (lambda f: _edit_config(f, text_config={**json.loads((f / "config.json").read_text())["text_config"], "hidden_size": 32}),
                         r"embed_tokens\.weight: shape \[512, 64\] does not match config\.json \(expected \[512, 32\]\)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_checkpoint_gets_one_clear_line(ckpts, tmp_path, case):
    folder = _copy(ckpts["moe_sharded"], tmp_path / "ckpt")
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
    with pytest.raises(BuildError, match=r"^cannot download google/gemma-4-26b-a4b-it: the Hugging Face Hub is unreachable"):
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
    return subprocess.run([sys.executable, "-m", "engine_builder", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_builds_tiny(tmp_path):
    proc = _cli("--model", "tiny", "--out-dir", "engines", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    engine = tmp_path / "engines" / "gemma-4-tiny-it-float32"
    spec = EngineSpec.load(engine)
    assert spec.model_name == "google/gemma-4-tiny-it" and spec.dtype == "float32" and spec.text.moe is not None
    assert spec.source["checkpoint"] == "tiny"
    assert sorted(p.name for p in (tmp_path / "engines").iterdir()) == ["gemma-4-tiny-it-float32"]


@pytest.mark.parametrize(("args", "message"), [
    (("--model", "tiny", "--dtype", "int3"), "unknown dtype 'int3'"),
    (("--model", "missing-folder"), "is neither tiny"),
])  # fmt: skip
def test_cli_bad_input_is_one_line(tmp_path, args, message):
    proc = _cli(*args, "--out-dir", "engines", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr and "Traceback" not in proc.stderr
    assert_nothing_left(tmp_path / "engines")


# ---------------------------------------------------------------- memory


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs to reset peak RSS")
def test_conversion_peak_memory_is_bounded(tmp_path):
    from engine_builder.memcheck import measure_conversion, write_random_checkpoint

    # ~46 MB float32 checkpoint, largest tensor 2 MB: holding the checkpoint (or a shard of it) would show
    folder, size = write_random_checkpoint(tmp_path / "ckpt", num_layers=8, dtype=torch.float32, shard_bytes=16 * 1024**2)
    assert size > 40 * 1024**2
    result = measure_conversion(folder, tmp_path / "out", dtype="bfloat16", shard_bytes=16 * 1024**2)
    engine = Path(result["engine"])
    assert EngineSpec.load(engine).dtype == "bfloat16"
    assert result["peak_growth"] < size / 2, result
