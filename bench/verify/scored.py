"""What one model produced for one prompt: the plain data ours.py hands to theirs.py and compare.py."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PromptTokens:
    """A prompt as both models read it: the token ids with images expanded, then our greedy steps."""

    name: str
    token_ids: tuple[int, ...]  # prompt (images expanded to their soft tokens) + greedy continuation
    prompt_len: int
    images: tuple  # PIL images, in prompt order
    image_soft_tokens: int  # the budget both image processors are given


@dataclass(frozen=True)
class Scored:
    tokens: PromptTokens
    logits: torch.Tensor  # [n, V] float32 on the CPU: row i predicts token_ids[i + 1]
