"""Prompts with images: the runtime against transformers (soft tokens scattered in, bidirectional
attention among one image's tokens on sliding layers, causal on full layers)."""

from __future__ import annotations

import numpy as np
from PIL import Image
from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

from gemma_runtime.api import GenerateRequest, SamplingParams
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine
from tests.parity.conftest import hf_greedy

BUDGET = 70
NEW_TOKENS = 48


def noise_image(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def test_two_images_greedy_matches(tiny):
    _, _, engine_dir, hf = tiny
    # A chunk budget smaller than one image: the scheduler must still compute each image in one step.
    engine = LLMEngine(
        engine_dir, RuntimeConfig(block_size=4, max_num_batched_tokens=24, default_image_soft_tokens=BUDGET)
    )
    free_at_start = engine.blocks.num_free
    images = [noise_image(200, 150, seed=1), noise_image(96, 320, seed=2)]
    prompt = "<bos><|turn>user\nLook: <|image|> and then <|image|> now tell me<turn|>\n<|turn>model\n"
    request = GenerateRequest(
        "img", prompt, SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True), images=tuple(images)
    )
    prepared = engine.prepare(request)
    assert len(prepared.image_spans) == 2
    ours = engine.generate([request])["img"]

    spec = engine.spec
    processor = Gemma4ImageProcessorPil(
        patch_size=spec.vision.patch_size, pooling_kernel_size=spec.vision.pooling_kernel_size
    )
    pixels = processor(images=images, max_soft_tokens=BUDGET, return_tensors="pt")
    ids = prepared.token_ids
    assert [int(n) for n in pixels["num_soft_tokens_per_image"]] == [s.end - s.start for s in prepared.image_spans]
    mm_types = [1 if t == spec.multimodal.image_token_id else 0 for t in ids]
    ref = hf_greedy(
        hf,
        ids,
        NEW_TOKENS,
        pixel_values=pixels["pixel_values"],
        image_position_ids=pixels["image_position_ids"],
        mm_token_type_ids=mm_types,
    )
    assert ours == ref
    assert engine.blocks.num_free == free_at_start


def test_image_logits_depend_on_the_image(tiny):
    """Guards against a path that silently ignores the pixels."""
    _, _, engine_dir, _ = tiny
    engine = LLMEngine(engine_dir, RuntimeConfig(block_size=4, default_image_soft_tokens=BUDGET))
    prompt = "<bos><|turn>user\n<|image|> what is it<turn|>\n<|turn>model\n"
    firsts = []
    for seed in (1, 2):
        req = GenerateRequest(
            f"s{seed}", prompt, SamplingParams(max_tokens=1, logprobs=3), images=(noise_image(64, 64, seed),)
        )
        engine.add_request(req)
        outs = []
        while engine.has_unfinished():
            outs += engine.step()
        firsts.append(outs[0].logprobs[0].logprob)
    assert abs(firsts[0] - firsts[1]) > 1e-6
