"""engine.json as frozen dataclasses: what the builder writes and the runtime reads (engines/README.md)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from gemma_runtime.engine_format.files import ENGINE_JSON, GENERATION_CONFIG

FORMAT_VERSION = 1

LayerType = Literal["sliding", "full"]


@dataclass(frozen=True)
class LayerSpec:
    type: LayerType
    head_dim: int
    num_kv_heads: int
    k_eq_v: bool
    rope_theta: float
    rope_angles: int  # frequencies that rotate; the rest of head_dim/2 are zero (proportional RoPE)


@dataclass(frozen=True)
class MoESpec:
    num_experts: int
    top_k: int
    intermediate_size: int


@dataclass(frozen=True)
class TextSpec:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    intermediate_size: int
    rms_norm_eps: float
    final_logit_softcapping: float | None
    sliding_window: int
    embed_scale: float
    layers: tuple[LayerSpec, ...]
    moe: MoESpec | None = None

    @classmethod
    def from_dict(cls, d: dict) -> TextSpec:
        d = dict(d)
        d["layers"] = tuple(LayerSpec(**layer) for layer in d["layers"])
        d["moe"] = MoESpec(**d["moe"]) if d.get("moe") else None
        return cls(**d)


@dataclass(frozen=True)
class VisionSpec:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    head_dim: int
    patch_size: int
    pooling_kernel_size: int
    position_embedding_size: int
    rope_theta: float
    rms_norm_eps: float
    standardize: bool
    default_output_length: int = 280


@dataclass(frozen=True)
class MultimodalSpec:
    image_token_id: int
    boi_token_id: int
    eoi_token_id: int
    video_token_id: int | None = None
    audio_token_id: int | None = None

    @property
    def placeholder_ids(self) -> tuple[int, ...]:
        """Soft-token placeholders: embedded as <pad> unless multimodal embeddings replace them."""
        return tuple(t for t in (self.image_token_id, self.video_token_id, self.audio_token_id) if t is not None)


@dataclass(frozen=True)
class TokenSpec:
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int


@dataclass(frozen=True)
class QuantizationSpec:
    method: str  # "fp8_e4m3"
    granularity: str  # "per_channel"
    modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class OrderedEmbeddingSpec:
    """The drafter's sparse LM head (transformers' Gemma4AssistantMaskedEmbedder): only the tokens of the
    `top_k` best of `num_centroids` vocabulary clusters get real logits."""

    num_centroids: int
    top_k: int


@dataclass(frozen=True)
class AssistantSpec:
    """Gemma 4's MTP drafter (`Gemma4AssistantForCausalLM`), stored in the engine's `folder`. Each of its
    layers reads the KV cache of the target's last layer of the same type; it has no cache of its own."""

    folder: str  # relative to the engine folder (files.ASSISTANT_DIR)
    checkpoint: str  # the hub id or folder it was converted from ("random": the tiny test drafter)
    sha256: str  # over its config.json and weight files' names and sizes, as source.sha256
    dtype: str  # its weights' dtype: bfloat16 in FP8 engines too (the drafter is never quantized)
    backbone_hidden_size: int  # the target's hidden size (checked at build time)
    text: TextSpec  # the drafter's decoder: dense, its layers carry no K/V projections
    ordered_embeddings: OrderedEmbeddingSpec | None = None

    @classmethod
    def from_dict(cls, d: dict) -> AssistantSpec:
        d = dict(d)
        d["text"] = TextSpec.from_dict(d["text"])
        oe = d.get("ordered_embeddings")
        d["ordered_embeddings"] = OrderedEmbeddingSpec(**oe) if oe else None
        return cls(**d)


@dataclass(frozen=True)
class EngineSpec:
    model_name: str
    architecture: str
    dtype: str  # "float32" | "bfloat16"
    max_model_len: int
    text: TextSpec
    tokens: TokenSpec
    stop_token_ids: tuple[int, ...]
    vision: VisionSpec | None = None
    multimodal: MultimodalSpec | None = None
    quantization: QuantizationSpec | None = None
    assistant: AssistantSpec | None = None  # the MTP drafter, when built with ASSISTANT=...
    source: dict = field(default_factory=dict)
    builder_version: str = "0.1.0"
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_dict(cls, d: dict) -> EngineSpec:
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"engine format_version {d.get('format_version')!r} is not {FORMAT_VERSION}: rebuild the engine"
            )
        d = dict(d)
        d["text"] = TextSpec.from_dict(d["text"])
        d["tokens"] = TokenSpec(**d["tokens"])
        d["stop_token_ids"] = tuple(d["stop_token_ids"])
        d["vision"] = VisionSpec(**d["vision"]) if d.get("vision") else None
        d["multimodal"] = MultimodalSpec(**d["multimodal"]) if d.get("multimodal") else None
        q = d.get("quantization")
        d["quantization"] = QuantizationSpec(**{**q, "modules": tuple(q.get("modules", ()))}) if q else None
        d["assistant"] = AssistantSpec.from_dict(d["assistant"]) if d.get("assistant") else None
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def load(cls, engine_dir: str | Path) -> EngineSpec:
        path = Path(engine_dir) / ENGINE_JSON
        if not path.is_file():
            raise FileNotFoundError(f"{engine_dir} is not an engine: no {ENGINE_JSON} (build one with `make engine`)")
        return cls.from_dict(json.loads(path.read_text()))

    def save(self, engine_dir: str | Path) -> None:
        (Path(engine_dir) / ENGINE_JSON).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def read_generation_defaults(engine_dir: str | Path) -> dict:
    """Default sampling from the engine's generation_config.json (temperature, top_p, top_k): what a
    request that names none of them gets. `do_sample: false` means greedy."""
    path = Path(engine_dir) / GENERATION_CONFIG
    cfg = json.loads(path.read_text()) if path.is_file() else {}
    if cfg.get("do_sample") is False:
        return {"temperature": 0.0}
    return {k: cfg[k] for k in ("temperature", "top_p", "top_k") if k in cfg}
