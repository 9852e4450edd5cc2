"""HF checkpoint names -> runtime weight names and layouts (engines/README.md, "Weights").

`plan_weights` turns a checkpoint's tensor list into `OutTensor`s: each names its few HF sources and a fuse
op from `FUSES`, and knows its output shape before anything is read, so the writer can lay out shards first
and then stream tensor by tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from gemma_runtime.engine_format.fp8 import quantize_per_row
from gemma_runtime.engine_format.spec import TextSpec

from .checkpoint import Checkpoint
from .errors import BuildError

LM = "model.language_model."
VISION = "model.vision_tower."
VISION_PROJ = "model.embed_vision.embedding_projection.weight"
# checkpoint tensors the runtime never uses
SKIPPED_PREFIXES = ("lm_head.", "model.embed_vision.embedding.", "model.audio_tower.", "model.embed_audio.")


@dataclass(frozen=True)
class Fuse:
    shape: Callable[[list[tuple[int, ...]]], tuple[int, ...]]
    apply: Callable[[list[torch.Tensor]], torch.Tensor]


def _rows_shape(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    return (sum(s[0] for s in shapes), *shapes[0][1:])


def _scale_experts(ts: list[torch.Tensor]) -> torch.Tensor:
    down, scale = ts  # down [E, H, Ie], scale [E]
    # routing multiplies expert e's output by per_expert_scale[e]; down is linear, so fold it into its rows
    return down.float() * scale.float()[:, None, None]  # [E, 1, 1] broadcast over [E, H, Ie]


FUSES: dict[str, Fuse] = {
    "copy": Fuse(shape=lambda s: s[0], apply=lambda ts: ts[0]),
    "rows": Fuse(shape=_rows_shape, apply=lambda ts: torch.cat(ts, dim=0)),
    "expert_scale": Fuse(shape=lambda s: s[0], apply=_scale_experts),
}


@dataclass(frozen=True)
class OutTensor:
    name: str
    sources: tuple[str, ...]
    fuse: str
    shape: tuple[int, ...]


# per decoder layer: runtime suffix <- (fuse, HF suffixes); attention's qkv is planned apart (it depends on k_eq_v)
LAYER_TENSORS: dict[str, tuple[str, tuple[str, ...]]] = {
    "input_norm.weight": ("copy", ("input_layernorm.weight",)),
    "post_attn_norm.weight": ("copy", ("post_attention_layernorm.weight",)),
    "pre_ffn_norm.weight": ("copy", ("pre_feedforward_layernorm.weight",)),
    "post_ffn_norm.weight": ("copy", ("post_feedforward_layernorm.weight",)),
    "layer_scalar": ("copy", ("layer_scalar",)),
    "attn.q_norm.weight": ("copy", ("self_attn.q_norm.weight",)),
    "attn.k_norm.weight": ("copy", ("self_attn.k_norm.weight",)),
    "attn.o_proj.weight": ("copy", ("self_attn.o_proj.weight",)),
    "mlp.gate_up_proj.weight": ("rows", ("mlp.gate_proj.weight", "mlp.up_proj.weight")),
    "mlp.down_proj.weight": ("copy", ("mlp.down_proj.weight",)),
}
MOE_TENSORS: dict[str, tuple[str, tuple[str, ...]]] = {
    "moe.router_proj.weight": ("copy", ("router.proj.weight",)),
    "moe.router_scale": ("copy", ("router.scale",)),
    "moe.gate_up_proj": ("copy", ("experts.gate_up_proj",)),
    "moe.down_proj": ("expert_scale", ("experts.down_proj", "router.per_expert_scale")),
    "moe.pre_norm.weight": ("copy", ("pre_feedforward_layernorm_2.weight",)),
    "moe.post_norm_dense.weight": ("copy", ("post_feedforward_layernorm_1.weight",)),
    "moe.post_norm_experts.weight": ("copy", ("post_feedforward_layernorm_2.weight",)),
}


class _Planner:
    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        self.out: list[OutTensor] = []
        self.used: set[str] = set()

    def add(self, name: str, fuse: str, sources: tuple[str, ...], expect: tuple[int, ...] | None = None) -> None:
        missing = [s for s in sources if s not in self.ckpt]
        if missing:
            raise BuildError(f"checkpoint {self.ckpt.folder} lacks tensor {missing[0]}")
        shape = FUSES[fuse].shape([self.ckpt.shape(s) for s in sources])
        if expect is not None and shape != expect:
            raise BuildError(f"{sources[0]}: shape {list(shape)} does not match config.json (expected {list(expect)})")
        self.used.update(sources)
        self.out.append(OutTensor(name, sources, fuse, shape))


def _plan_layer(p: _Planner, spec: TextSpec, i: int) -> None:
    layer, hf = spec.layers[i], f"{LM}layers.{i}."
    out, H = f"layers.{i}.", spec.hidden_size
    nq, nkv, d = spec.num_attention_heads, layer.num_kv_heads, layer.head_dim
    has_v = f"{hf}self_attn.v_proj.weight" in p.ckpt
    if has_v == layer.k_eq_v:
        raise BuildError(
            f"layer {i}: v_proj is {'present' if has_v else 'absent'} but config.json says k_eq_v={layer.k_eq_v}"
        )
    qkv = ("q_proj", "k_proj") + (() if layer.k_eq_v else ("v_proj",))
    p.add(
        out + "attn.qkv_proj.weight",
        "rows",
        tuple(f"{hf}self_attn.{n}.weight" for n in qkv),
        expect=((nq + (1 if layer.k_eq_v else 2) * nkv) * d, H),
    )
    for name, (fuse, sources) in LAYER_TENSORS.items():
        p.add(out + name, fuse, tuple(hf + s for s in sources))
    if spec.moe is not None:
        E, Ie = spec.moe.num_experts, spec.moe.intermediate_size
        for name, (fuse, sources) in MOE_TENSORS.items():
            expect = {
                "moe.gate_up_proj": (E, 2 * Ie, H),
                "moe.down_proj": (E, H, Ie),
                "moe.router_proj.weight": (E, H),
            }.get(name)
            p.add(out + name, fuse, tuple(hf + s for s in sources), expect=expect)


def vision_name(hf_name: str) -> str:
    if hf_name == VISION_PROJ:
        return "vision.embedding_projection.weight"
    # Gemma4ClippableLinear wraps nn.Linear as `.linear`; clipping is off on these sizes, so the runtime drops the wrapper
    return "vision." + hf_name[len(VISION) :].replace(".linear.", ".")


def plan_weights(ckpt: Checkpoint, spec: TextSpec, with_vision: bool) -> list[OutTensor]:
    p = _Planner(ckpt)
    V, H = spec.vocab_size, spec.hidden_size
    p.add("embed_tokens.weight", "copy", (f"{LM}embed_tokens.weight",), expect=(V, H))
    for i in range(spec.num_layers):
        _plan_layer(p, spec, i)
    p.add("norm.weight", "copy", (f"{LM}norm.weight",), expect=(H,))
    if with_vision:
        for name in sorted(n for n in ckpt.tensors if n.startswith(VISION)):
            p.add(vision_name(name), "copy", (name,))
        p.add(vision_name(VISION_PROJ), "copy", (VISION_PROJ,))
    left = sorted(n for n in ckpt.tensors if n not in p.used and not n.startswith(SKIPPED_PREFIXES))
    if left:
        more = f" (and {len(left) - 1} more)" if len(left) > 1 else ""
        raise BuildError(
            f"checkpoint tensor {left[0]}{more} has no place in the engine layout: config.json and weights disagree"
        )
    return p.out


# The linear layers an FP8 engine stores in e4m3 (names after `layers.{i}.`): the weights every decode
# step streams. Embeddings (also the tied LM head, whose logits feed sampling directly), norms, layer
# scalars, the router (its top-k choice flips on small errors) and the vision tower keep the engine dtype.
FP8_LINEAR_SUFFIXES = (
    "attn.qkv_proj.weight",
    "attn.o_proj.weight",
    "mlp.gate_up_proj.weight",
    "mlp.down_proj.weight",
    "moe.gate_up_proj",
    "moe.down_proj",
)


def is_fp8_linear(name: str) -> bool:
    return name.startswith("layers.") and name.split(".", 2)[2] in FP8_LINEAR_SUFFIXES


def quantize_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [..., N, K] -> (e4m3 [..., N, K], float32 scale [..., N]): one scale per output channel (row).

    Per channel rather than per tensor: rows of a trained weight differ in magnitude by orders, and one
    tensor-wide scale would leave the small rows a few of e4m3's 3 mantissa bits' worth of levels; a row
    scale costs 4 bytes per row and applies as a free epilogue of torch._scaled_mm's rowwise scaling (and
    of the fused-MoE kernel), unlike 128x128 block scales, which need their own GEMM kernel.
    """
    return quantize_per_row(w)


def materialize(ckpt: Checkpoint, t: OutTensor, dtype: torch.dtype) -> torch.Tensor:
    """Read one output tensor's sources, fuse them, cast: only these few tensors are ever in memory."""
    result = FUSES[t.fuse].apply([ckpt.tensor(s) for s in t.sources])
    if result.is_floating_point():
        result = result.to(dtype)
    return result.contiguous()
