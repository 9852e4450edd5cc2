"""A drafter checkpoint folder -> its AssistantSpec, checked against the target, and its weights planned
and written into the engine's assistant/ folder (engines/README.md, "The MTP drafter")."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gemma_runtime.engine_format.dtypes import TORCH_DTYPES, EngineDtype
from gemma_runtime.engine_format.files import ASSISTANT_DIR
from gemma_runtime.engine_format.spec import AssistantSpec, OrderedEmbeddingSpec, TextSpec

from ..checkpoint import Checkpoint, read_config
from ..errors import BuildError
from ..spec import text_spec
from ..weights import LAYER_TENSORS, OutTensor, _Planner, materialize
from ..writer import DEFAULT_MAX_SHARD_BYTES, Entry, write_sharded

MODEL_TYPE = "gemma4_assistant"
HF = "model."  # transformers' Gemma4AssistantForCausalLM keeps its decoder under `model.`
# the target's per-layer tensors the drafter lacks: its layers compute no keys or values
NO_KV = ("attn.k_norm.weight",)


def load_assistant_config(folder: Path) -> dict:
    config = read_config(folder)
    if config.get("model_type") != MODEL_TYPE:
        raise BuildError(
            f"{folder}: model_type is {config.get('model_type')!r}, expected {MODEL_TYPE!r} (a Gemma 4 drafter)"
        )
    if not isinstance(config.get("text_config"), dict):
        raise BuildError(f"{folder}/config.json has no text_config")
    return config


def assistant_spec(config: dict, checkpoint: str, sha256: str, dtype: str) -> AssistantSpec:
    # every drafter layer shares the target's KV (num_kv_shared_layers == num_hidden_layers); the target's
    # checks refuse KV sharing, which concerns only layers with K/V weights: the drafter has none to convert
    text = text_spec({"text_config": {**config["text_config"], "num_kv_shared_layers": 0}}, dtype)
    ordered = None
    if config.get("use_ordered_embeddings"):
        ordered = OrderedEmbeddingSpec(int(config["num_centroids"]), int(config["centroid_intermediate_top_k"]))
    return AssistantSpec(
        folder=ASSISTANT_DIR,
        checkpoint=checkpoint,
        sha256=sha256,
        dtype=dtype,
        backbone_hidden_size=int(config.get("backbone_hidden_size") or 0),
        text=text,
        ordered_embeddings=ordered,
    )


def check_matches(a: AssistantSpec, target: TextSpec) -> None:
    """The drafter must read the target's cache and hidden state as they are: one line if it cannot."""
    if a.backbone_hidden_size != target.hidden_size:
        raise BuildError(
            f"the drafter was trained on hidden size {a.backbone_hidden_size}, the target has {target.hidden_size}"
        )
    if a.text.vocab_size != target.vocab_size:
        raise BuildError(f"the drafter's vocabulary ({a.text.vocab_size}) is not the target's ({target.vocab_size})")
    for i, layer in enumerate(a.text.layers):
        mine = [t for t in target.layers if t.type == layer.type]
        if not mine:
            raise BuildError(f"drafter layer {i} is {layer.type} but the target has no {layer.type} layer")
        t = mine[-1]  # the layer whose KV it reads
        if (layer.head_dim, layer.num_kv_heads) != (t.head_dim, t.num_kv_heads):
            raise BuildError(
                f"drafter layer {i} ({layer.type}) expects head_dim {layer.head_dim} with {layer.num_kv_heads} KV heads,"
                f" the target's {layer.type} cache has head_dim {t.head_dim} with {t.num_kv_heads}"
            )
        if a.text.num_attention_heads % t.num_kv_heads:
            raise BuildError(
                f"drafter heads ({a.text.num_attention_heads}) do not group over {t.num_kv_heads} KV heads"
            )


def plan_assistant(ckpt: Checkpoint, a: AssistantSpec) -> list[OutTensor]:
    p = _Planner(ckpt)
    V, H, B = a.text.vocab_size, a.text.hidden_size, a.backbone_hidden_size
    p.add("pre_projection.weight", "copy", ("pre_projection.weight",), expect=(H, 2 * B))
    p.add("post_projection.weight", "copy", ("post_projection.weight",), expect=(B, H))
    head = "lm_head.weight" if "lm_head.weight" in ckpt else f"{HF}embed_tokens.weight"  # tied when saved once
    p.add("lm_head.weight", "copy", (head,), expect=(V, H))
    for i, layer in enumerate(a.text.layers):
        hf, out = f"{HF}layers.{i}.", f"layers.{i}."
        q_rows = a.text.num_attention_heads * layer.head_dim
        p.add(out + "attn.q_proj.weight", "copy", (hf + "self_attn.q_proj.weight",), expect=(q_rows, H))
        for name, (fuse, sources) in LAYER_TENSORS.items():
            if name not in NO_KV:
                p.add(out + name, fuse, tuple(hf + s for s in sources))
    p.add("norm.weight", "copy", (f"{HF}norm.weight",), expect=(H,))
    if a.ordered_embeddings is not None:
        C = a.ordered_embeddings.num_centroids
        p.add("masked_embedding.centroids.weight", "copy", ("masked_embedding.centroids.weight",), expect=(C, H))
        p.add("masked_embedding.token_ordering", "copy", ("masked_embedding.token_ordering",), expect=(V,))
    left = sorted(n for n in ckpt.tensors if n not in p.used and n != f"{HF}embed_tokens.weight")
    if left:
        raise BuildError(
            f"drafter tensor {left[0]} has no place in the engine layout: config.json and weights disagree"
        )
    return p.out


@dataclass(frozen=True)
class PreparedAssistant:
    """A drafter checked and planned, before anything is written."""

    spec: AssistantSpec
    ckpt: Checkpoint
    plan: list[OutTensor]


def prepare_assistant(folder: Path, checkpoint: str, target: TextSpec, dtype: EngineDtype) -> PreparedAssistant:
    """FP8 engines keep the drafter in their base dtype (bfloat16): it is small, and its weights are read
    once per draft step at most, so quantizing it would save little and cost acceptance."""
    ckpt = Checkpoint(folder, load=load_assistant_config)
    spec = assistant_spec(ckpt.config, checkpoint, ckpt.sha256(), dtype.base)
    check_matches(spec, target)
    return PreparedAssistant(spec, ckpt, plan_assistant(ckpt, spec))


def write_assistant(prepared: PreparedAssistant, engine_dir: Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES):
    out = engine_dir / prepared.spec.folder
    out.mkdir()
    target = TORCH_DTYPES[prepared.spec.dtype]
    by_name = {t.name: t for t in prepared.plan}
    entries = []
    for t in prepared.plan:
        source = prepared.ckpt.tensors[t.sources[0]].dtype
        entries.append(Entry(t.name, t.shape, target if source.is_floating_point else source))
    write_sharded(out, entries, lambda e: materialize(prepared.ckpt, by_name[e.name], e.dtype), max_shard_bytes)
