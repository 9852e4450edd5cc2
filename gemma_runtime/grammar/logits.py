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


# bit i of byte value b, for every b: [256, 8]
_BYTE_BITS = ((torch.arange(256)[:, None] >> torch.arange(8)) & 1).bool()
_tables: dict[torch.device, torch.Tensor] = {}


def unpack_bitmask(bits: torch.Tensor, vocab: int) -> torch.Tensor:
    """int32 [R, W] -> bool [R, vocab], True where the token is allowed. Byte k of word w (little-endian,
    as on x86 hosts and CUDA devices) holds tokens 32*w + 8*k ..: one table lookup per byte, which is
    several times faster than shifting every word 32 times."""
    table = _tables.get(bits.device)
    if table is None:
        table = _tables[bits.device] = _BYTE_BITS.to(bits.device)
    as_bytes = bits.contiguous().view(torch.uint8).to(torch.int64)  # [R, W] int32 -> [R, 4W] bytes
    return table[as_bytes].reshape(bits.shape[0], -1)[:, :vocab]  # [R, 4W, 8] -> [R, 32W] -> [R, vocab]


def apply_token_mask(logits: torch.Tensor, mask: TokenMask | None) -> torch.Tensor:
    if mask is None or not mask.rows:
        return logits
    bits = mask.bits
    if logits.device.type == "cuda":
        bits = bits.pin_memory().to(logits.device, non_blocking=True)
    else:
        bits = bits.to(logits.device)
    allowed = unpack_bitmask(bits, logits.shape[1])  # [R, V]
    lowest = torch.finfo(logits.dtype).min
    if len(mask.rows) == logits.shape[0] and mask.rows == list(range(logits.shape[0])):
        return logits.masked_fill(~allowed, lowest)  # every row constrained: no gather, no scatter
    rows = to_device(mask.rows, torch.int64, logits.device)
    logits = logits.clone()
    logits[rows] = logits[rows].masked_fill(~allowed, lowest)
    return logits
