"""Random-weight engines at a model's true dimensions, made directly on the device (no checkpoint).

Speed does not depend on the weights' values, so the benchmark needs no 52 GB download: the engine
geometry comes from the same Gemma4Config -> engine.json path the builder uses, the weights are drawn
on the device in the runtime layout (engines/README.md), and FP8 engines quantize them there with the
builder's own per-channel quantizer. The same code makes the tiny engine for `--dry-run` on CPU.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from engine_builder.dtypes import engine_dtype
from engine_builder.spec import text_spec
from engine_builder.tiny.random_checkpoint import tiny_config
from engine_builder.tiny.tokenizer import make_tiny_tokenizer
from engine_builder.weights import is_fp8_linear, quantize_fp8
from gemma_runtime.engine_format.fp8 import scale_name
from gemma_runtime.engine_format.spec import EngineSpec, QuantizationSpec, TextSpec, TokenSpec


def _layer_types(n: int) -> list[str]:
    # both real models: five sliding layers then one full, and the last layer is full (gemma4.md)
    return ["full_attention" if i % 6 == 5 else "sliding_attention" for i in range(n)]


# Gemma4TextConfig overrides on top of the tiny config (reference/gemma4.md, section 1.1)
MODELS: dict[str, dict] = {
    "26b": dict(
        kind="moe",
        num_layers=30,
        text=dict(
            vocab_size=262144,
            hidden_size=2816,
            intermediate_size=2112,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=256,
            global_head_dim=512,
            num_global_key_value_heads=2,
            num_experts=128,
            top_k_experts=8,
            moe_intermediate_size=704,
            max_position_embeddings=262144,
            layer_types=_layer_types(30),
        ),
    ),
    "31b": dict(
        kind="dense",
        num_layers=60,
        text=dict(
            vocab_size=262144,
            hidden_size=5376,
            intermediate_size=21504,
            num_attention_heads=32,
            num_key_value_heads=16,
            head_dim=256,
            global_head_dim=512,
            num_global_key_value_heads=4,
            max_position_embeddings=262144,
            layer_types=_layer_types(60),
        ),
    ),
    "tiny": dict(kind="moe", num_layers=6, text={}),  # the tests' tiny MoE geometry
}
SLIDING_WINDOW = {"26b": 1024, "31b": 1024, "tiny": 8}


@dataclass
class RandomEngine:
    engine_dir: Path  # engine.json and tokenizer files; the weights stay in memory
    spec: EngineSpec
    weights: dict[str, torch.Tensor]


def weight_shapes(spec: TextSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor of the runtime layout (engines/README.md, "Weights") with its shape."""
    H, nq, V, I = spec.hidden_size, spec.num_attention_heads, spec.vocab_size, spec.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (V, H), "norm.weight": (H,)}
    for i, layer in enumerate(spec.layers):
        p, d, nkv = f"layers.{i}.", layer.head_dim, layer.num_kv_heads
        shapes.update(
            {
                p + "attn.qkv_proj.weight": ((nq + (1 if layer.k_eq_v else 2) * nkv) * d, H),
                p + "attn.q_norm.weight": (d,),
                p + "attn.k_norm.weight": (d,),
                p + "attn.o_proj.weight": (H, nq * d),
                p + "input_norm.weight": (H,),
                p + "post_attn_norm.weight": (H,),
                p + "pre_ffn_norm.weight": (H,),
                p + "post_ffn_norm.weight": (H,),
                p + "layer_scalar": (1,),
                p + "mlp.gate_up_proj.weight": (2 * I, H),
                p + "mlp.down_proj.weight": (H, I),
            }
        )
        if spec.moe is not None:
            E, Ie = spec.moe.num_experts, spec.moe.intermediate_size
            shapes.update(
                {
                    p + "moe.router_proj.weight": (E, H),
                    p + "moe.router_scale": (H,),
                    p + "moe.gate_up_proj": (E, 2 * Ie, H),
                    p + "moe.down_proj": (E, H, Ie),
                    p + "moe.pre_norm.weight": (H,),
                    p + "moe.post_norm_dense.weight": (H,),
                    p + "moe.post_norm_experts.weight": (H,),
                }
            )
    return shapes


def _random(
    name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, g: torch.Generator
) -> torch.Tensor:
    if len(shape) == 1:  # norms, scales, layer scalars: around 1, as trained ones are
        return (1.0 + 0.1 * torch.randn(shape, generator=g, device=device)).to(dtype)
    # std 1/sqrt(fan_in) keeps activations O(1) through every layer, so no NaN/inf path skews timings
    return (torch.randn(shape, generator=g, device=device, dtype=dtype) / math.sqrt(shape[-1])).to(dtype)


def model_config(model: str, tokenizer) -> object:
    """The Gemma4Config of a model's text dimensions (no vision tower), over the tiny tokenizer."""
    m = MODELS[model]
    return tiny_config(
        tokenizer,
        m["kind"],
        sliding_window=SLIDING_WINDOW[model],
        num_layers=m["num_layers"],
        with_vision=False,
        text_overrides=m["text"],
    )


def write_random_spec(model: str, dtype: str, out_dir: Path) -> EngineSpec:
    """engine.json and the tiny tokenizer of a random engine at `model`'s dimensions, without its weights:
    enough for a process that only serves (bench/engine_loop.py), while its engine process draws them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_tokenizer(out_dir)  # prompts are token ids; unknown ids decode to nothing
    config = model_config(model, tokenizer)
    parsed = engine_dtype(dtype)
    text = text_spec(config.to_dict(), parsed.base)
    ids = tokenizer.convert_tokens_to_ids(["<bos>", "<eos>", "<pad>"])
    fp8_names = tuple(n for n in weight_shapes(text) if is_fp8_linear(n))
    spec = EngineSpec(
        model_name=f"random-{model}",
        architecture="Gemma4ForConditionalGeneration",
        dtype=parsed.base,
        max_model_len=min(config.text_config.max_position_embeddings, 65536),
        text=text,
        tokens=TokenSpec(bos_token_id=ids[0], eos_token_id=ids[1], pad_token_id=ids[2]),
        stop_token_ids=(ids[1],),
        quantization=QuantizationSpec(parsed.quantization, "per_channel", fp8_names) if parsed.quantization else None,
        source={"checkpoint": f"random weights at {model} dimensions"},
    )
    spec.save(out_dir)
    return spec


def random_weights(spec: EngineSpec, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor of `spec`'s runtime layout, drawn on `device`; FP8 engines' linears quantized there."""
    target = engine_dtype(spec.dtype).torch_dtype
    quantized = spec.quantization is not None
    g = torch.Generator(device=device).manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for name, shape in weight_shapes(spec.text).items():
        w = _random(name, shape, target, device, g)
        if quantized and is_fp8_linear(name):
            weights[name], weights[scale_name(name)] = quantize_fp8(w)
        else:
            weights[name] = w
        del w
    return weights


def make_random_engine(model: str, dtype: str, device: torch.device, out_dir: Path, seed: int = 0) -> RandomEngine:
    """dtype: bf16 or fp8 (the builder's names). Writes engine.json and the tiny tokenizer into out_dir."""
    spec = write_random_spec(model, dtype, out_dir)
    return RandomEngine(out_dir, spec, random_weights(spec, device, seed))


@contextmanager
def weights_in_memory(weights: dict[str, torch.Tensor]):
    """LLMEngine reads weights from the engine folder; here they are already on the device."""
    import gemma_runtime.engine.llm_engine as llm_engine

    real = llm_engine.load_weights
    llm_engine.load_weights = lambda engine_dir, device, dtype=None: weights
    try:
        yield
    finally:
        llm_engine.load_weights = real


def active_bytes_per_token(spec: TextSpec, weights: dict[str, torch.Tensor]) -> int:
    """Weight bytes one decode step at batch 1 must read: everything but the experts, which count top_k / E,
    and the embedding table, read whole as the tied LM head (its one embedding row is negligible)."""
    total = 0
    for name, w in weights.items():
        nbytes = w.numel() * w.element_size()
        if ".moe.gate_up_proj" in name or ".moe.down_proj" in name:
            nbytes = nbytes * spec.moe.top_k // spec.moe.num_experts
        total += nbytes
    return total
