"""Tiny random Gemma 4 checkpoints (HF format) shaped like the 26B-A4B ("moe") and the 31B ("dense").

Every weight is perturbed after HF's init: HF initialises norms, layer scalars and router scales to ones,
which would hide a runtime that forgets one of them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch

from .tokenizer import TINY_VOCAB_SIZE, load_chat_template, make_tiny_tokenizer

TINY_TEXT = dict(
    vocab_size=TINY_VOCAB_SIZE,
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    global_head_dim=32,
    num_global_key_value_heads=1,
    attention_k_eq_v=True,
    final_logit_softcapping=30.0,
    use_bidirectional_attention="vision",
    hidden_size_per_layer_input=0,
    max_position_embeddings=8192,
    rms_norm_eps=1e-6,
    rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
    },
)
TINY_MOE = dict(enable_moe_block=True, num_experts=8, top_k_experts=2, moe_intermediate_size=32)
TINY_DENSE = dict(enable_moe_block=False, num_experts=None, top_k_experts=None, moe_intermediate_size=None)
KINDS = {"moe": TINY_MOE, "dense": TINY_DENSE}
TINY_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    head_dim=16,
    patch_size=16,
    pooling_kernel_size=3,
    position_embedding_size=1024,
    standardize=True,
    rope_parameters={"rope_type": "default", "rope_theta": 100.0},
)
# the config's multimodal ids, by Gemma 4 token string (ids come from the tokenizer, never hard-coded)
MM_TOKENS = {
    "boi_token_id": "<|image>",
    "eoi_token_id": "<image|>",
    "image_token_id": "<|image|>",
    "video_token_id": "<|video|>",
    "audio_token_id": "<|audio|>",
    "boa_token_id": "<|audio>",
    "eoa_token_index": "<audio|>",
}
GENERATION_DEFAULTS = dict(do_sample=True, temperature=1.0, top_p=0.95, top_k=64)


def layer_types(num_layers: int) -> list[str]:
    # a full layer every 3rd layer and always the last, like the real 5:1 pattern but denser for tiny tests
    return ["full_attention" if (i % 3 == 2 or i == num_layers - 1) else "sliding_attention" for i in range(num_layers)]


def _ids(tokenizer, tokens: list[str]) -> list[int]:
    ids = tokenizer.convert_tokens_to_ids(tokens)
    for tok, i in zip(tokens, ids):
        if i is None or tokenizer.convert_ids_to_tokens(i) != tok:
            raise ValueError(f"tiny tokenizer lacks {tok}")
    return ids


# (predicate on the state-dict name, new value from the old tensor and a generator); first match wins
Perturb = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _around(center: float, spread: float) -> Perturb:
    return lambda t, g: center + spread * torch.randn(t.shape, generator=g)


def _fan_in(t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    # std 1/sqrt(fan_in) keeps activations O(1), so the tiny model's logits are far from uniform
    return torch.randn(t.shape, generator=g) / math.sqrt(t.shape[-1])


PERTURB_RULES: tuple[tuple[Callable[[str], bool], Perturb], ...] = (
    (lambda n: n.endswith("std_bias"), _around(0.0, 0.3)),
    (lambda n: n.endswith("std_scale"), _around(1.0, 0.2)),
    (lambda n: n.endswith("layer_scalar"), _around(1.0, 0.2)),
    (lambda n: n.endswith(("router.scale", "per_expert_scale")), _around(1.0, 0.3)),
    (lambda n: "norm" in n.rsplit(".", 2)[-2] and n.endswith(".weight"), _around(1.0, 0.15)),
    # std 1/sqrt(H) (times sqrt(H) embed scale = O(1)): larger and the tied head mostly echoes the input token
    (lambda n: n.endswith("embed_tokens.weight"), _fan_in),
    (lambda n: n.endswith("position_embedding_table"), _around(0.0, 0.1)),
    (lambda n: True, _fan_in),
)


def perturb_(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():  # sorted insertion order: deterministic under `seed`
            if name == "lm_head.weight" or not t.is_floating_point():
                continue  # tied to embed_tokens
            rule = next(fn for pred, fn in PERTURB_RULES if pred(name))
            t.copy_(rule(t, g).to(t.dtype))


def tiny_config(
    tokenizer,
    kind: Literal["moe", "dense"] = "moe",
    *,
    sliding_window: int = 8,
    num_layers: int = 6,
    with_vision: bool = True,
    text_overrides: dict | None = None,
):
    """A Gemma4Config for the tiny tokenizer; text_overrides change the text geometry (memcheck makes big ones)."""
    from transformers import Gemma4Config

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, not {kind!r}")
    bos, eos, pad, turn_end = _ids(tokenizer, ["<bos>", "<eos>", "<pad>", "<turn|>"])
    text = dict(
        TINY_TEXT,
        **KINDS[kind],
        num_hidden_layers=num_layers,
        sliding_window=sliding_window,
        layer_types=layer_types(num_layers),
        bos_token_id=bos,
        pad_token_id=pad,
        eos_token_id=[eos, turn_end],
    )
    text.update(text_overrides or {})
    mm = dict(zip(MM_TOKENS, _ids(tokenizer, list(MM_TOKENS.values()))))
    return Gemma4Config(
        text_config=text,
        vision_config=dict(TINY_VISION) if with_vision else None,
        audio_config=None,
        eos_token_id=[eos, turn_end],
        bos_token_id=bos,
        pad_token_id=pad,
        **mm,
    )


@contextmanager
def _quiet_hf_progress():
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def make_tiny_checkpoint(
    out_dir: str | Path,
    *,
    kind: Literal["moe", "dense"] = "moe",
    seed: int = 0,
    sliding_window: int = 8,
    num_layers: int = 6,
    max_shard_size: str | None = None,
    with_vision: bool = True,
    text_overrides: dict | None = None,
) -> Path:
    """Write a random float32 Gemma4ForConditionalGeneration checkpoint with tokenizer and chat template;
    text_overrides change the text geometry (tiny_config)."""
    from transformers import Gemma4ForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_tokenizer(out)  # saves tokenizer files, special_tokens_map.json and the chat template
    config = tiny_config(
        tokenizer,
        kind,
        sliding_window=sliding_window,
        num_layers=num_layers,
        with_vision=with_vision,
        text_overrides=text_overrides,
    )
    torch.manual_seed(seed)  # HF's own init draws from the global generator
    model = Gemma4ForConditionalGeneration(config).to(torch.float32).eval()
    perturb_(model, seed)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    with _quiet_hf_progress():  # a 2 MB save needs no progress bar in `make engine MODEL=tiny`
        model.save_pretrained(str(out), safe_serialization=True, **kwargs)
    if not (out / "chat_template.jinja").is_file():
        (out / "chat_template.jinja").write_text(tokenizer.chat_template or load_chat_template())
    eos, turn_end, tool_response, bos, pad = _ids(tokenizer, ["<eos>", "<turn|>", "<|tool_response>", "<bos>", "<pad>"])
    generation = dict(
        eos_token_id=[eos, turn_end, tool_response], bos_token_id=bos, pad_token_id=pad, **GENERATION_DEFAULTS
    )
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out
