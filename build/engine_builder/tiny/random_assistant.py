"""A tiny random Gemma 4 MTP drafter (`Gemma4AssistantForCausalLM`) shaped for a given target.

Its attention geometry per layer type (head dim, KV heads) is the target's, since each of its layers
reads the target's KV cache of that type; its own hidden size differs from the target's on purpose, so
the pre/post projections between the two are exercised. Weights are perturbed like the tiny target's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gemma_runtime.engine_format.spec import TextSpec

from .random_checkpoint import _quiet_hf_progress, perturb_

ASSISTANT_HIDDEN = 48
ASSISTANT_INTERMEDIATE = 64
ASSISTANT_LAYERS = ("sliding_attention", "sliding_attention", "full_attention")


def _layer(target: TextSpec, kind: str):
    return next(layer for layer in reversed(target.layers) if layer.type == kind)


def assistant_config(target: TextSpec, *, ordered_embeddings: bool = False, num_centroids: int = 8, top_k: int = 2):
    from transformers import Gemma4AssistantConfig

    sliding, full = _layer(target, "sliding"), _layer(target, "full")
    text = dict(
        model_type="gemma4_text",
        vocab_size=target.vocab_size,
        vocab_size_per_layer_input=0,
        hidden_size=ASSISTANT_HIDDEN,
        intermediate_size=ASSISTANT_INTERMEDIATE,
        num_hidden_layers=len(ASSISTANT_LAYERS),
        layer_types=list(ASSISTANT_LAYERS),
        num_attention_heads=target.num_attention_heads,
        head_dim=sliding.head_dim,
        num_key_value_heads=sliding.num_kv_heads,
        global_head_dim=full.head_dim,
        num_global_key_value_heads=full.num_kv_heads,
        attention_k_eq_v=True,  # only so that full layers take num_global_key_value_heads
        hidden_size_per_layer_input=0,
        enable_moe_block=False,
        sliding_window=target.sliding_window,
        rms_norm_eps=target.rms_norm_eps,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": sliding.rope_theta},
            "full_attention": {
                "rope_type": "proportional",
                "partial_rotary_factor": 2 * full.rope_angles / full.head_dim,
                "rope_theta": full.rope_theta,
            },
        },
    )
    return Gemma4AssistantConfig(
        text_config=text,
        backbone_hidden_size=target.hidden_size,
        use_ordered_embeddings=ordered_embeddings,
        num_centroids=num_centroids,
        centroid_intermediate_top_k=top_k,
    )


def make_random_assistant(out_dir: str | Path, target: TextSpec, *, seed: int = 1, ordered_embeddings: bool = False):
    """Write a float32 drafter checkpoint for `target` (an engine TextSpec) with transformers' save_pretrained."""
    from transformers import Gemma4AssistantForCausalLM

    out = Path(out_dir)
    config = assistant_config(target, ordered_embeddings=ordered_embeddings)
    torch.manual_seed(seed)
    model = Gemma4AssistantForCausalLM(config).to(torch.float32).eval()
    perturb_(model, seed)
    if ordered_embeddings:  # a random permutation of the vocabulary into equal clusters
        order = torch.randperm(target.vocab_size, generator=torch.Generator().manual_seed(seed))
        model.masked_embedding.token_ordering.copy_(order)
    with _quiet_hf_progress():
        model.save_pretrained(str(out), safe_serialization=True)
    return out
