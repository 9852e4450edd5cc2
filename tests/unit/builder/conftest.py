"""The builder tests' tiny checkpoints (MoE, dense, sharded) and their engines, built once per test session,
and the helpers that read HF and engine tensors back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from engine_builder.convert import build_engine
from engine_builder.tiny.random_checkpoint import make_tiny_checkpoint

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
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    )
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
            out[o + "moe.down_proj"] = torch.stack(
                [hf[p + "experts.down_proj"][e] * scale[e] for e in range(scale.numel())]
            )
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


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {
        "moe": make_tiny_checkpoint(root / "tiny-moe", kind="moe", seed=1),
        "dense": make_tiny_checkpoint(root / "tiny-dense", kind="dense", seed=2),
        "moe_sharded": make_tiny_checkpoint(root / "tiny-moe-sharded", kind="moe", seed=1, max_shard_size="300KB"),
    }


@pytest.fixture(scope="session")
def engines(ckpts, tmp_path_factory) -> dict[tuple[str, str], Path]:
    out = tmp_path_factory.mktemp("engines")
    return {(k, d): build_engine(ckpts[k], out, dtype=d, progress=False) for k in ("moe", "dense") for d in DTYPES}


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **changes}))
