"""Vision parity: our preprocessing and vision tower against transformers' Gemma 4 on a tiny random model."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Gemma4Config, Gemma4ForConditionalGeneration
from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

from gemma_runtime.engine_format.spec import VisionSpec
from gemma_runtime.inputs.image_preprocess import num_soft_tokens_for, preprocess_image
from gemma_runtime.model.vision_encoder import VisionEncoder

PATCH, POOL = 16, 3
TEXT_HIDDEN = 64


# ---------------------------------------------------------------- images made here


def noise(w: int, h: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    channels = len(Image.new(mode, (1, 1)).getbands())
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)
    return Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode)


def gradient(w: int, h: int) -> Image.Image:
    xs = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    ys = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    arr = np.stack([xs, ys, 255 - (xs + ys) / 2], axis=-1).astype(np.uint8)  # [h, w, 3]
    return Image.fromarray(arr, "RGB")


def reopened(image: Image.Image, fmt: str, **save_kwargs) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save_kwargs)
    buf.seek(0)
    return Image.open(buf)


def palette_gif() -> Image.Image:
    img = reopened(noise(120, 90, seed=3).quantize(colors=32), "GIF", transparency=5)
    assert img.mode == "P" and img.info.get("transparency") is not None
    return img


def rgba_png() -> Image.Image:
    img = reopened(noise(150, 100, seed=4, mode="RGBA"), "PNG")
    assert img.mode == "RGBA"
    return img


IMAGES = {
    "noise_640x480": lambda: noise(640, 480),
    "gradient_300x200": lambda: gradient(300, 200),
    "tall_gradient_200x700": lambda: gradient(200, 700),
    "exact_384x384": lambda: noise(384, 384, seed=1),  # already the target size at budget 70: no resize
    "tiny_5x7": lambda: noise(5, 7, seed=2),
    "very_wide_3000x10": lambda: gradient(3000, 10),  # one side rounds to zero: the capped edge case
    "very_tall_12x1500": lambda: noise(12, 1500, seed=5),
    "grayscale_L": lambda: noise(97, 61, seed=6, mode="L"),
    "palette_gif": palette_gif,
    "rgba_png": rgba_png,
}


# ---------------------------------------------------------------- (a) preprocessing


@pytest.fixture(scope="module")
def hf_processor() -> Gemma4ImageProcessorPil:
    return Gemma4ImageProcessorPil(patch_size=PATCH, pooling_kernel_size=POOL)


@pytest.mark.parametrize("budget", [70, 280])
@pytest.mark.parametrize("name", list(IMAGES))
def test_preprocess_matches_hf(hf_processor, name: str, budget: int):
    image = IMAGES[name]()
    ref = hf_processor(images=[image], max_soft_tokens=budget, return_tensors="pt")
    ref_positions = ref["image_position_ids"][0]
    valid = (ref_positions != -1).all(dim=-1)
    n = int(valid.sum())
    assert valid[:n].all() and not valid[n:].any(), "reference padding is not a suffix"

    ours = preprocess_image(image, patch_size=PATCH, pooling_kernel_size=POOL, max_soft_tokens=budget)

    assert ours.pixel_values.dtype == torch.float32 and ours.position_ids.dtype == torch.int64
    assert ours.pixel_values.shape == (n, 3 * PATCH * PATCH)
    assert torch.equal(ours.position_ids, ref_positions[:n])
    assert torch.equal(ours.pixel_values, ref["pixel_values"][0][:n].float())
    hf_tokens = int(ref["num_soft_tokens_per_image"][0])
    assert ours.num_soft_tokens == hf_tokens <= budget
    assert (
        num_soft_tokens_for(
            image.width, image.height, patch_size=PATCH, pooling_kernel_size=POOL, max_soft_tokens=budget
        )
        == hf_tokens
    )


def test_token_counts_from_the_reference_brief():
    # Worked examples at the real geometry (patch 16, pool 3): they pin the resize rule itself.
    cases = [((1024, 768), 280, 266), ((1080, 1920), 280, 264), ((224, 224), 280, 256), ((1024, 768), 1120, 1064)]
    for (w, h), budget, tokens in cases:
        assert num_soft_tokens_for(w, h, patch_size=16, pooling_kernel_size=3, max_soft_tokens=budget) == tokens


@pytest.mark.parametrize("budget", [0, 100, 279, 2240])
def test_unsupported_budget_is_rejected(budget: int):
    with pytest.raises(ValueError, match="max_soft_tokens"):
        preprocess_image(noise(64, 64), patch_size=PATCH, pooling_kernel_size=POOL, max_soft_tokens=budget)
    with pytest.raises(ValueError, match="max_soft_tokens"):
        num_soft_tokens_for(64, 64, patch_size=PATCH, pooling_kernel_size=POOL, max_soft_tokens=budget)


# ---------------------------------------------------------------- (b) the tower


def tiny_config() -> Gemma4Config:
    text = dict(
        vocab_size=512,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        global_head_dim=32,
        num_global_key_value_heads=1,
        attention_k_eq_v=True,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        final_logit_softcapping=30.0,
        use_bidirectional_attention="vision",
        hidden_size_per_layer_input=0,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
        },
        max_position_embeddings=4096,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        patch_size=PATCH,
        pooling_kernel_size=POOL,
        position_embedding_size=1024,
        standardize=True,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 100.0},
    )
    return Gemma4Config(
        text_config=text,
        vision_config=vision,
        audio_config=None,
        boi_token_id=500,
        eoi_token_id=501,
        image_token_id=502,
        video_token_id=503,
        boa_token_id=504,
        eoa_token_index=505,
        audio_token_id=506,
    )


def perturb_(model: torch.nn.Module, seed: int) -> None:
    """Random values for every vision weight and buffer: HF's init (norms = 1, std buffers) would hide bugs."""
    g = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    for name, t in state.items():
        if not (name.startswith("model.vision_tower.") or name.startswith("model.embed_vision.")):
            continue
        rand = torch.randn(t.shape, generator=g)
        if t.ndim == 1:  # norms, std_bias, std_scale: away from 1 and 0, different per channel
            new = rand * 0.5 if name.endswith("std_bias") else 1.0 + 0.3 * rand
        else:
            new = rand / t.shape[-1] ** 0.5
        t.copy_(new)


def vision_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """HF names -> our `vision.*` names (engines/README.md), prefix stripped."""
    out = {}
    for name, t in model.state_dict().items():
        if name.startswith("model.vision_tower."):
            out[name[len("model.vision_tower.") :].replace(".linear.", ".")] = t
        elif name == "model.embed_vision.embedding_projection.weight":
            out["embedding_projection.weight"] = t
    return out


def spec_from(config: Gemma4Config) -> VisionSpec:
    v = config.vision_config
    return VisionSpec(
        hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size,
        num_layers=v.num_hidden_layers,
        num_attention_heads=v.num_attention_heads,
        head_dim=v.head_dim,
        patch_size=v.patch_size,
        pooling_kernel_size=v.pooling_kernel_size,
        position_embedding_size=v.position_embedding_size,
        rope_theta=v.rope_parameters["rope_theta"],
        rms_norm_eps=v.rms_norm_eps,
        standardize=v.standardize,
    )


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    config = tiny_config()
    hf = Gemma4ForConditionalGeneration(config).eval()
    perturb_(hf, seed=1)
    ours = VisionEncoder(spec_from(config), TEXT_HIDDEN, torch.float32)
    ours.load_state_dict(vision_weights(hf), strict=True)
    return hf, ours


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("budget", [70, 280])
def test_soft_tokens_match_hf(models, hf_processor, budget: int):
    hf, ours = models
    images = [noise(256, 256, seed=7), gradient(90, 300)]
    ref = hf_processor(images=images, max_soft_tokens=budget, return_tensors="pt")
    with torch.no_grad():
        hf_out = hf.model.get_image_features(
            ref["pixel_values"], ref["image_position_ids"], return_dict=True
        ).pooler_output

    pre = [preprocess_image(im, patch_size=PATCH, pooling_kernel_size=POOL, max_soft_tokens=budget) for im in images]
    got = ours(pre)

    assert len(got) == len(hf_out) == 2
    assert got[0].shape[0] != got[1].shape[0], "the two images should differ in size"
    for g, r, p in zip(got, hf_out, pre):
        assert g.shape == r.shape == (p.num_soft_tokens, TEXT_HIDDEN)
        assert g.dtype == torch.float32
        assert rel_err(g, r) < 1e-5


def test_weights_matter(models, hf_processor):
    """The comparison can fail: a shifted std_bias changes the output well past tolerance.

    (A uniform std_scale change would not: the weightless RMSNorm before the projection cancels it.)
    """
    hf, ours = models
    image = noise(100, 100, seed=8)
    pre = [preprocess_image(image, patch_size=PATCH, pooling_kernel_size=POOL, max_soft_tokens=70)]
    before = ours(pre)[0]
    saved = ours.std_bias.clone()
    try:
        ours.std_bias.add_(0.1)
        after = ours(pre)[0]
    finally:
        ours.std_bias.copy_(saved)
    assert rel_err(after, before) > 1e-3


def test_bfloat16_is_as_close_as_hf_bfloat16(models, hf_processor):
    """In bf16 our tower stays within a small multiple of HF's own bf16 error against the float32 result."""
    hf, ours = models
    hf_bf16 = copy.deepcopy(hf).to(torch.bfloat16)
    ours_bf16 = VisionEncoder(ours.spec, TEXT_HIDDEN, torch.bfloat16)
    ours_bf16.load_state_dict(vision_weights(hf_bf16), strict=True)
    images = [noise(256, 256, seed=9), gradient(300, 90)]
    ref = hf_processor(images=images, max_soft_tokens=70, return_tensors="pt")
    with torch.no_grad():
        truth = hf.model.get_image_features(
            ref["pixel_values"], ref["image_position_ids"], return_dict=True
        ).pooler_output
        hf_low = hf_bf16.model.get_image_features(
            ref["pixel_values"], ref["image_position_ids"], return_dict=True
        ).pooler_output
    got = ours_bf16(
        [preprocess_image(im, patch_size=PATCH, pooling_kernel_size=POOL, max_soft_tokens=70) for im in images]
    )
    for g, t, h in zip(got, truth, hf_low):
        assert g.dtype == torch.bfloat16 and g.shape == t.shape
        print(
            f"\nbf16 error against float32: ours {rel_err(g.float(), t):.2e}, transformers {rel_err(h.float(), t):.2e}"
        )
        assert rel_err(g.float(), t) < max(3 * rel_err(h.float(), t), 1e-2)
