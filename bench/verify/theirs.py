"""transformers' side of `make verify`: the reference checkpoint's logits over the same token ids and pixels.

Its image inputs come from transformers' own Gemma 4 image processor (not ours), given the same
soft-token budget; mm_token_type_ids mark the image tokens, as transformers' processor would.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .scored import PromptTokens, Scored


def load_reference(folder: Path, dtype: torch.dtype, device: str):
    from transformers import Gemma4ForConditionalGeneration
    from transformers.utils import logging

    logging.disable_progress_bar()  # the verdict is the command's last line on stderr, not a loading bar

    # on a GPU straight into its memory: a 26B checkpoint does not fit twice in host memory
    kwargs = {"device_map": device} if device.startswith("cuda") else {}
    return Gemma4ForConditionalGeneration.from_pretrained(str(folder), dtype=dtype, **kwargs).eval()


def _image_inputs(model, tokens: PromptTokens) -> dict:
    if not tokens.images:
        return {}
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    v = model.config.vision_config
    processor = Gemma4ImageProcessorPil(patch_size=v.patch_size, pooling_kernel_size=v.pooling_kernel_size)
    out = processor(images=list(tokens.images), max_soft_tokens=tokens.image_soft_tokens, return_tensors="pt")
    ids = torch.tensor(tokens.token_ids)
    return {
        "pixel_values": out["pixel_values"].to(model.device, model.dtype),
        "image_position_ids": out["image_position_ids"].to(model.device),
        "mm_token_type_ids": (ids == model.config.image_token_id).long()[None].to(model.device),  # [1, n]
    }


@torch.inference_mode()
def teacher_forced(model, tokens: PromptTokens) -> Scored:
    ids = torch.tensor([tokens.token_ids], device=model.device)  # [1, n]
    logits = model(input_ids=ids, **_image_inputs(model, tokens)).logits[0]  # [n, V]
    return Scored(tokens, logits.float().cpu())


def run_theirs(model, ours: list[Scored]) -> list[Scored]:
    """The reference's Scored for each of ours, over exactly our token ids."""
    return [teacher_forced(model, s.tokens) for s in ours]
