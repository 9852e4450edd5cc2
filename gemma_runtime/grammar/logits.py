"""Logit edits applied before sampling: OpenAI's `logit_bias` and the grammar's token bitmask.

Both run as tensor ops on the logits' device and read nothing back, so a step that carries them still
samples without a host wait. The bitmask is xgrammar's layout (int32 [R, ceil(V/32)], bit j of word w
allows token 32*w + j), built on the host by `GrammarStep`; it is copied to the device (pinned,
non-blocking) and unpacked there. A masked token gets the most negative finite float, not -inf, so the
log-softmax reported as logprobs stays finite (JSON has no -inf) while its probability is exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gemma_runtime.device_io import to_device


@dataclass(frozen=True)
class TokenMask:
    """The grammar's allowed tokens for some rows of a step's logits."""

    rows: list[int]  # rows of the step's [S, V] logits that are constrained
    bits: torch.Tensor  # [len(rows), ceil(V/32)] int32, on the host


def apply_logit_bias(logits: torch.Tensor, biases: list[tuple[tuple[int, float], ...]]) -> torch.Tensor:
    """biases[i]: (token id, bias) pairs of row i, added to its logits (OpenAI's semantics: -100 all but
    bans a token, +100 all but forces it)."""
    if not any(biases):
        return logits
    vocab = logits.shape[1]
    flat = [i * vocab + t for i, pairs in enumerate(biases) for t, _ in pairs]
    values = [b for pairs in biases for _, b in pairs]
    logits = logits.clone()
    # [S, V] -> [S * V]: one scatter-add for every (row, token) pair of the batch
    logits.view(-1).index_add_(0, to_device(flat, torch.int64, logits.device),
                               to_device(values, logits.dtype, logits.device))
    return logits


def unpack_bitmask(bits: torch.Tensor, vocab: int) -> torch.Tensor:
    """int32 [R, W] -> bool [R, vocab], True where the token is allowed."""
    shifts = torch.arange(32, dtype=torch.int32, device=bits.device)
    allowed = (bits[:, :, None] >> shifts) & 1  # [R, W, 32]: bit j of word w is token 32*w + j
    return allowed.reshape(bits.shape[0], -1)[:, :vocab].bool()  # [R, W*32] -> [R, vocab]


def apply_token_mask(logits: torch.Tensor, mask: TokenMask | None) -> torch.Tensor:
    if mask is None or not mask.rows:
        return logits
    bits = mask.bits
    if logits.device.type == "cuda":
        bits = bits.pin_memory().to(logits.device, non_blocking=True)
    else:
        bits = bits.to(logits.device)
    allowed = unpack_bitmask(bits, logits.shape[1])  # [R, V]
    rows = to_device(mask.rows, torch.int64, logits.device)
    logits = logits.clone()
    logits[rows] = logits[rows].masked_fill(~allowed, torch.finfo(logits.dtype).min)
    return logits
