"""Turns next-token logits into tokens: penalties, temperature, top-k, top-p, min-p, seeds, logprobs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gemma_runtime.api import SamplingParams, TokenLogprob


@dataclass(frozen=True)
class SamplingInput:
    params: SamplingParams
    output_token_ids: list[int]  # for presence and frequency penalties
    generator: torch.Generator | None  # a seeded generator reproduces the request's samples


def _apply_penalties(logits: torch.Tensor, rows: list[SamplingInput]) -> None:
    for i, row in enumerate(rows):
        p = row.params
        if (p.presence_penalty == 0 and p.frequency_penalty == 0) or not row.output_token_ids:
            continue
        ids = torch.tensor(row.output_token_ids, device=logits.device)
        counts = torch.bincount(ids, minlength=logits.shape[1]).to(logits.dtype)  # [V]
        logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)


def _filter(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """One row [V] of temperature-scaled logits -> the same with excluded tokens at -inf."""
    if p.top_k > 0 and p.top_k < logits.shape[0]:
        kth = torch.topk(logits, p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if p.min_p > 0:
        logits = logits.masked_fill(probs < p.min_p * probs.max(), float("-inf"))
        probs = torch.softmax(logits, dim=-1)
    if p.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the token that crosses it included).
        outside = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) >= p.top_p
        logits = logits.clone()
        logits[order[outside]] = float("-inf")
    return logits


def sample(logits: torch.Tensor, rows: list[SamplingInput]) -> tuple[list[int], list[TokenLogprob | None]]:
    """logits [S, V] float32 (after the soft cap). Returns one token per row and its logprobs if asked.

    Logprobs describe the model's own distribution (before penalties and temperature), as OpenAI's do.
    """
    raw_logprobs = None
    if any(r.params.logprobs is not None for r in rows):
        raw_logprobs = torch.log_softmax(logits, dim=-1)
    logits = logits.clone()
    _apply_penalties(logits, rows)

    tokens: list[int] = []
    for i, row in enumerate(rows):
        p = row.params
        if p.is_greedy:
            tokens.append(int(torch.argmax(logits[i])))
            continue
        filtered = _filter(logits[i] / p.temperature, p)
        probs = torch.softmax(filtered, dim=-1)
        tokens.append(int(torch.multinomial(probs, 1, generator=row.generator)))

    logprobs: list[TokenLogprob | None] = []
    for i, row in enumerate(rows):
        k = row.params.logprobs
        if k is None:
            logprobs.append(None)
            continue
        top = ()
        if k > 0:
            values, ids = torch.topk(raw_logprobs[i], k)
            top = tuple(zip(ids.tolist(), values.tolist()))
        logprobs.append(TokenLogprob(tokens[i], float(raw_logprobs[i, tokens[i]]), top))
    return tokens, logprobs
