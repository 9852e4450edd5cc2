"""engine.json geometry from a Hugging Face Gemma 4 config.json (the runtime never reads HF configs)."""

from __future__ import annotations

from collections.abc import Callable

from transformers import Gemma4TextConfig, Gemma4VisionConfig

from gemma_runtime.engine_format.spec import LayerSpec, MoESpec, MultimodalSpec, TextSpec, VisionSpec

from .dtypes import rounded_embed_scale
from .errors import BuildError

# HF layer_types value -> engine layer type
LAYER_TYPES = {"sliding_attention": "sliding", "full_attention": "full"}
DEFAULT_GLOBAL_HEAD_DIM = 512  # what Gemma4TextConfig assumes when config.json names none
DEFAULT_ROPE = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
}
# Features of the Gemma 4 family that the 26B/31B do not use and the runtime does not implement: value must match.
UNSUPPORTED_TEXT = {
    "hidden_size_per_layer_input": (0, None),
    "num_kv_shared_layers": (0, None),
    "use_double_wide_mlp": (False, None),
    "attention_bias": (False, None),
    "use_bidirectional_attention": ("vision", None),
}


def _defaults(cls, skip: tuple[str, ...] = ()) -> dict:
    d = cls().to_dict()
    return {k: v for k, v in d.items() if k not in skip}


def text_config(config: dict) -> dict:
    """config.json's text_config with HF's defaults filled in (the per-layer fields are left alone)."""
    tc = {
        **_defaults(Gemma4TextConfig, skip=("layer_types", "per_layer_config", "rope_parameters")),
        **config["text_config"],
    }
    for key, allowed in UNSUPPORTED_TEXT.items():
        if tc.get(key) not in allowed:
            raise BuildError(f"text_config.{key}={tc.get(key)!r} is not supported (Gemma 4 26B/31B use {allowed[0]!r})")
    return tc


def _rope_angles_default(params: dict, head_dim: int) -> int:
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise BuildError("default RoPE with partial_rotary_factor != 1 is not supported")
    return head_dim // 2


def _rope_angles_proportional(params: dict, head_dim: int) -> int:
    # same arithmetic as transformers' _compute_proportional_rope_parameters
    return int(params.get("partial_rotary_factor", 1.0) * head_dim // 2)


ROPE_TYPES: dict[str, Callable[[dict, int], int]] = {
    "default": _rope_angles_default,
    "proportional": _rope_angles_proportional,
}


def _layer_spec(tc: dict, i: int, hf_type: str) -> LayerSpec:
    if hf_type not in LAYER_TYPES:
        raise BuildError(f"layer {i} has type {hf_type!r}; expected one of {sorted(LAYER_TYPES)}")
    full = hf_type == "full_attention"
    if "per_layer_config" in tc:  # configs saved by transformers >= 5.2x carry the resolved overrides
        # keys are layer indices as strings, zero-padded ("05") once there are 10 layers or more
        override = {int(k): v for k, v in (tc["per_layer_config"] or {}).items()}.get(i) or {}
        head_dim = override.get("head_dim", tc["head_dim"])
        num_kv = override.get("num_key_value_heads", tc["num_key_value_heads"])
    elif full:  # released config.json files name the full-layer geometry directly
        head_dim = tc.get("global_head_dim") or DEFAULT_GLOBAL_HEAD_DIM
        global_kv = tc.get("num_global_key_value_heads")
        num_kv = global_kv if tc.get("attention_k_eq_v") and global_kv is not None else tc["num_key_value_heads"]
    else:
        head_dim, num_kv = tc["head_dim"], tc["num_key_value_heads"]
    params = (tc.get("rope_parameters") or DEFAULT_ROPE).get(hf_type) or DEFAULT_ROPE[hf_type]
    rope_type = params.get("rope_type", "default")
    if rope_type not in ROPE_TYPES:
        raise BuildError(f"rope_type {rope_type!r} ({hf_type}) is not supported; known: {sorted(ROPE_TYPES)}")
    if params.get("factor", 1.0) != 1.0:
        raise BuildError(f"RoPE factor {params['factor']} ({hf_type}) is not supported")
    return LayerSpec(
        type=LAYER_TYPES[hf_type],
        head_dim=int(head_dim),
        num_kv_heads=int(num_kv),
        k_eq_v=bool(tc.get("attention_k_eq_v")) and full,
        rope_theta=float(params["rope_theta"]),
        rope_angles=ROPE_TYPES[rope_type](params, int(head_dim)),
    )


def text_spec(config: dict, dtype: str) -> TextSpec:
    tc = text_config(config)
    layer_types = tc.get("layer_types")
    if not layer_types or len(layer_types) != tc["num_hidden_layers"]:
        raise BuildError(f"text_config.layer_types must list {tc['num_hidden_layers']} layers")
    moe = None
    if tc.get("enable_moe_block"):
        inter = tc.get("moe_intermediate_size") or tc.get("expert_intermediate_size")
        if not (tc.get("num_experts") and tc.get("top_k_experts") and inter):
            raise BuildError("enable_moe_block is set but num_experts/top_k_experts/moe_intermediate_size are missing")
        moe = MoESpec(num_experts=int(tc["num_experts"]), top_k=int(tc["top_k_experts"]), intermediate_size=int(inter))
    softcap = tc.get("final_logit_softcapping")
    return TextSpec(
        vocab_size=int(tc["vocab_size"]),
        hidden_size=int(tc["hidden_size"]),
        num_layers=int(tc["num_hidden_layers"]),
        num_attention_heads=int(tc["num_attention_heads"]),
        intermediate_size=int(tc["intermediate_size"]),
        rms_norm_eps=float(tc["rms_norm_eps"]),
        final_logit_softcapping=float(softcap) if softcap is not None else None,
        sliding_window=int(tc["sliding_window"]),
        embed_scale=rounded_embed_scale(int(tc["hidden_size"]), dtype),
        layers=tuple(_layer_spec(tc, i, t) for i, t in enumerate(layer_types)),
        moe=moe,
    )


def vision_spec(config: dict) -> VisionSpec | None:
    if not config.get("vision_config"):
        return None
    vc = {**_defaults(Gemma4VisionConfig), **config["vision_config"]}
    rope = vc.get("rope_parameters") or {}
    return VisionSpec(
        hidden_size=int(vc["hidden_size"]),
        intermediate_size=int(vc["intermediate_size"]),
        num_layers=int(vc["num_hidden_layers"]),
        num_attention_heads=int(vc["num_attention_heads"]),
        head_dim=int(vc["head_dim"]),
        patch_size=int(vc["patch_size"]),
        pooling_kernel_size=int(vc["pooling_kernel_size"]),
        position_embedding_size=int(vc["position_embedding_size"]),
        rope_theta=float(rope.get("rope_theta", 100.0)),
        rms_norm_eps=float(vc["rms_norm_eps"]),
        standardize=bool(vc["standardize"]),
        default_output_length=int(vc.get("default_output_length") or config.get("vision_soft_tokens_per_image") or 280),
    )


def multimodal_spec(config: dict) -> MultimodalSpec | None:
    if not config.get("vision_config"):
        return None
    return MultimodalSpec(
        image_token_id=int(config.get("image_token_id", 258_880)),
        boi_token_id=int(config.get("boi_token_id", 255_999)),
        eoi_token_id=int(config.get("eoi_token_id", 258_882)),
        video_token_id=config.get("video_token_id"),
        audio_token_id=config.get("audio_token_id"),
    )


def default_max_model_len(config: dict, cap: int = 32_768) -> int:
    return min(int(text_config(config).get("max_position_embeddings") or cap), cap)
