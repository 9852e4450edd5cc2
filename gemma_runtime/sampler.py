"""Turns next-token logits into tokens: penalties, temperature, top-k, min-p, top-p, seeds, logprobs.

The whole batch is processed with tensor ops (per-row settings become [S] tensors), so on a GPU a step
samples without waiting on the host; the one host read is the final list of tokens. Random draws use
the exponential race (argmax of p / E with E ~ Exp(1), which picks token i with probability p_i), so a
seeded request draws its noise from its own generator and reproduces whatever batch it runs in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gemma_runtime.api import SamplingParams, TokenLogprob


@dataclass(frozen=True)
class SamplingInput:
    params: SamplingParams
    output_token_ids: list[int]  # for presence and frequency penalties
    generator: torch.Generator | None  # a seeded generator reproduces the request's samples


def _column(rows: list[SamplingInput], field, device, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor([field(r.params) for r in rows], dtype=dtype, device=device)  # [S]


def _apply_penalties(logits: torch.Tensor, rows: list[SamplingInput]) -> torch.Tensor:
    penalised = [i for i, r in enumerate(rows)
                 if (r.params.presence_penalty or r.params.frequency_penalty) and r.output_token_ids]
    if not penalised:
        return logits
    counts = torch.zeros(len(penalised), logits.shape[1], dtype=logits.dtype, device=logits.device)  # [P, V]
    for j, i in enumerate(penalised):
        ids = torch.tensor(rows[i].output_token_ids, device=logits.device)
        counts[j].index_add_(0, ids, torch.ones(len(ids), dtype=logits.dtype, device=logits.device))
    sub = [rows[i] for i in penalised]
    frequency = _column(sub, lambda p: p.frequency_penalty, logits.device)[:, None]  # [P, 1]
    presence = _column(sub, lambda p: p.presence_penalty, logits.device)[:, None]
    logits = logits.clone()
    index = torch.tensor(penalised, device=logits.device)
    logits[index] -= frequency * counts + presence * (counts > 0).to(logits.dtype)
    return logits


def _filter(logits: torch.Tensor, rows: list[SamplingInput]) -> torch.Tensor:
    """Temperature-scaled logits [S, V] -> probabilities with excluded tokens at 0:
    top-k first, then min-p relative to the most likely token, then top-p over what is left."""
    device, vocab = logits.device, logits.shape[1]
    neg_inf = torch.finfo(logits.dtype).min
    top_k = _column(rows, lambda p: p.top_k if 0 < p.top_k < vocab else vocab, device, torch.int64)  # [S]
    if bool((top_k < vocab).any()):
        kth = torch.topk(logits, int(top_k.max()), dim=-1).values.gather(1, (top_k - 1)[:, None])  # [S, 1]
        logits = logits.masked_fill(logits < kth, neg_inf)
    probs = torch.softmax(logits, dim=-1)
    min_p = _column(rows, lambda p: p.min_p, device)[:, None]  # [S, 1]
    if bool((min_p > 0).any()):
        probs = probs.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    top_p = _column(rows, lambda p: p.top_p, device)[:, None]  # [S, 1]
    if bool((top_p < 1).any()):
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the token that crosses it included).
        outside = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) >= top_p
        probs = probs.scatter(1, order, sorted_probs.masked_fill(outside, 0.0))
    return probs


def _exponential_noise(probs: torch.Tensor, rows: list[SamplingInput], default: torch.Generator | None) -> torch.Tensor:
    noise = torch.empty_like(probs).exponential_(generator=default)  # [S, V]
    for i, row in enumerate(rows):
        if row.generator is not None and row.generator is not default:
            noise[i].exponential_(generator=row.generator)
    return noise.clamp_min_(1e-10)  # an exact 0 would turn p / E into inf (or nan where p is 0)


def sample(logits: torch.Tensor, rows: list[SamplingInput], default_generator: torch.Generator | None = None
           ) -> tuple[list[int], list[TokenLogprob | None]]:
    """logits [S, V] float32 (after the soft cap). Returns one token per row and its logprobs if asked.

    Logprobs describe the model's own distribution (before penalties and temperature), as OpenAI's do.
    """
    want_logprobs = any(r.params.logprobs is not None for r in rows)
    raw_logprobs = torch.log_softmax(logits, dim=-1) if want_logprobs else None
    logits = _apply_penalties(logits, rows)
    greedy = torch.tensor([r.params.is_greedy for r in rows], device=logits.device)  # [S]
    tokens = torch.argmax(logits, dim=-1)  # [S]
    if not bool(greedy.all()):
        temperature = _column(rows, lambda p: p.temperature if not p.is_greedy else 1.0, logits.device)[:, None]
        probs = _filter(logits / temperature, rows)
        drawn = torch.argmax(probs / _exponential_noise(probs, rows, default_generator), dim=-1)  # [S]
        tokens = torch.where(greedy, tokens, drawn)
    token_list = tokens.tolist()
    return token_list, _logprobs(raw_logprobs, tokens, rows) if want_logprobs else [None] * len(rows)


def _logprobs(raw: torch.Tensor, tokens: torch.Tensor, rows: list[SamplingInput]) -> list[TokenLogprob | None]:
    chosen = raw.gather(1, tokens[:, None])[:, 0].tolist()  # [S]
    k_max = max(r.params.logprobs or 0 for r in rows)
    top_values, top_ids = torch.topk(raw, k_max, dim=-1) if k_max else (None, None)  # [S, k_max]
    top_values = top_values.tolist() if k_max else None
    top_ids = top_ids.tolist() if k_max else None
    out: list[TokenLogprob | None] = []
    for i, row in enumerate(rows):
        k = row.params.logprobs
        if k is None:
            out.append(None)
            continue
        top = tuple(zip(top_ids[i][:k], top_values[i][:k])) if k else ()
        out.append(TokenLogprob(int(tokens[i]), chosen[i], top))
    return out
