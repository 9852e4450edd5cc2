"""Logit edits applied before sampling: OpenAI's `logit_bias` and the grammar's token bitmask.

Both run as tensor ops on the logits' device and read nothing back, so a step that carries them still
samples without a host wait. The bitmask is xgrammar's layout (int32 [R, ceil(V/32)], bit j of word w
allows token 32*w + j), built on the host by `GrammarStep`; it is copied to the device (pinned,
non-blocking) and applied there by xgrammar's kernel. When logprobs are asked, a masked token gets the
most negative finite float instead of -inf, so the reported log-softmax stays finite (JSON has no -inf)
while its probability is exactly 0. `unpack_bitmask` (tests, benchmark) reads a mask on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gemma_runtime.executor.device_io import to_device


@dataclass(frozen=True)
class TokenMask:
    """The grammar's allowed tokens for some rows of a step's logits."""

    rows: list[int]  # rows of the step's [S, V] logits that are constrained
    bits: torch.Tensor  # [S, ceil(V/32)] int32 on the host: row i is logits row i (unconstrained rows all ones)


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
    logits.view(-1).index_add_(
        0, to_device(flat, torch.int64, logits.device), to_device(values, logits.dtype, logits.device)
    )
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


def apply_token_mask(logits: torch.Tensor, mask: TokenMask | None, finite: bool = False) -> torch.Tensor:
    """Masks the constrained rows in place with xgrammar's kernel (its CPU, CUDA or Triton path by
    device). `finite`: masked tokens get the lowest finite float instead of -inf (for logprobs)."""
    if mask is None or not mask.rows:
        return logits
    import xgrammar as xgr  # only a constrained step gets here

    bits = mask.bits
    if logits.device.type == "cuda":
        bits = bits.pin_memory().to(logits.device, non_blocking=True)
    elif bits.device != logits.device:
        bits = bits.to(logits.device)
    indices = None if len(mask.rows) == logits.shape[0] else mask.rows
    xgr.apply_token_bitmask_inplace(logits, bits, vocab_size=logits.shape[1], indices=indices)
    if finite:
        logits.clamp_(min=torch.finfo(logits.dtype).min)  # -inf -> lowest: probability 0, JSON-safe logprob
    return logits
