"""Turns next-token logits into tokens: penalties, temperature, top-k, min-p, top-p, seeds, logprobs.

The whole batch is processed with tensor ops (per-row settings become [S] tensors), and every branch
is decided from the requests' parameters on the host, never by reading a device tensor: on a GPU a step
samples without waiting, and the tokens stay on the device (`sample_on_device`) until the engine asks
for them (`SampledBatch.to_host`), which lets the next step start first. Random draws use
the exponential race (argmax of p / E with E ~ Exp(1), which picks token i with probability p_i), so a
seeded request draws its noise from its own generator and reproduces whatever batch it runs in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gemma_runtime.api import SamplingParams, TokenLogprob
from gemma_runtime.executor.device_io import HostCopy, to_device
from gemma_runtime.grammar.logits import TokenMask, apply_logit_bias, apply_token_mask
from gemma_runtime.speculative.rejection import RejectionGroup, apply_rejection


@dataclass(frozen=True)
class SamplingInput:
    params: SamplingParams
    output_token_ids: list[int]  # for presence and frequency penalties
    generator: torch.Generator | None  # a seeded generator reproduces the request's samples


def _column(rows: list[SamplingInput], field, device, dtype=torch.float32) -> torch.Tensor:
    return to_device([field(r.params) for r in rows], dtype, device)  # [S]


def _apply_penalties(logits: torch.Tensor, rows: list[SamplingInput]) -> torch.Tensor:
    penalised = [
        i
        for i, r in enumerate(rows)
        if (r.params.presence_penalty or r.params.frequency_penalty) and r.output_token_ids
    ]
    if not penalised:
        return logits
    vocab = logits.shape[1]
    # every (row, generated token) pair as one flat index into [P, V]: one copy to the device, one scatter
    flat = [j * vocab + t for j, i in enumerate(penalised) for t in rows[i].output_token_ids]
    flat_ids = to_device(flat, torch.int64, logits.device)
    counts = torch.zeros(len(penalised) * vocab, dtype=logits.dtype, device=logits.device)
    counts.index_add_(0, flat_ids, torch.ones(len(flat), dtype=logits.dtype, device=logits.device))
    counts = counts.view(len(penalised), vocab)  # [P, V]
    sub = [rows[i] for i in penalised]
    frequency = _column(sub, lambda p: p.frequency_penalty, logits.device)[:, None]  # [P, 1]
    presence = _column(sub, lambda p: p.presence_penalty, logits.device)[:, None]
    logits = logits.clone()
    index = to_device(penalised, torch.int64, logits.device)
    logits[index] -= frequency * counts + presence * (counts > 0).to(logits.dtype)
    return logits


def _filter(logits: torch.Tensor, rows: list[SamplingInput]) -> torch.Tensor:
    """Temperature-scaled logits [S, V] -> probabilities with excluded tokens at 0:
    top-k first, then min-p relative to the most likely token, then top-p over what is left."""
    device, vocab = logits.device, logits.shape[1]
    neg_inf = torch.finfo(logits.dtype).min
    k_of = [r.params.top_k if 0 < r.params.top_k < vocab else vocab for r in rows]
    if min(k_of) < vocab:
        top_k = to_device(k_of, torch.int64, device)  # [S]
        kth = torch.topk(logits, max(k_of), dim=-1).values.gather(1, (top_k - 1)[:, None])  # [S, 1]
        logits = logits.masked_fill(logits < kth, neg_inf)
    probs = torch.softmax(logits, dim=-1)
    if any(r.params.min_p > 0 for r in rows):
        min_p = _column(rows, lambda p: p.min_p, device)[:, None]  # [S, 1]
        probs = probs.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    if any(r.params.top_p < 1 for r in rows):
        top_p = _column(rows, lambda p: p.top_p, device)[:, None]  # [S, 1]
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


@dataclass
class SampledBatch:
    """One step's samples, still on the device: the chosen tokens and, when any row asked for logprobs,
    the model's logprob of each and the top candidates (k_max wide; each row keeps its own k)."""

    tokens: torch.Tensor  # [S] int64
    logprob_k: list[int | None]  # per row: the request's `logprobs`, None when not asked
    chosen_logprobs: torch.Tensor | None = None  # [S] float32
    top_values: torch.Tensor | None = None  # [S, k_max]
    top_ids: torch.Tensor | None = None  # [S, k_max]

    def start_host_copy(self) -> HostCopy:
        """Starts the device-to-host copy without waiting for it (pinned memory on CUDA)."""
        return HostCopy([self.tokens, self.chosen_logprobs, self.top_values, self.top_ids])

    def to_host(self, copy: HostCopy | None = None) -> tuple[list[int], list[TokenLogprob | None]]:
        """Waits for the copy (started here if not before) and returns tokens and logprobs as Python values."""
        tokens, chosen, top_values, top_ids = (copy or self.start_host_copy()).wait()
        token_list = tokens.tolist()
        if chosen is None:
            return token_list, [None] * len(token_list)
        chosen = chosen.tolist()
        top_values = top_values.tolist() if top_values is not None else None
        top_ids = top_ids.tolist() if top_ids is not None else None
        out: list[TokenLogprob | None] = []
        for i, k in enumerate(self.logprob_k):
            if k is None:
                out.append(None)
                continue
            top = tuple(zip(top_ids[i][:k], top_values[i][:k])) if k else ()
            out.append(TokenLogprob(token_list[i], chosen[i], top))
        return token_list, out


def sample_on_device(
    logits: torch.Tensor,
    rows: list[SamplingInput],
    default_generator: torch.Generator | None = None,
    mask: TokenMask | None = None,
    rejection: list[RejectionGroup] | None = None,
) -> SampledBatch:
    """logits [S, V] float32 (after the soft cap) -> one token per row, with logprobs where asked.

    Logprobs describe the distribution before penalties and temperature, as OpenAI's do, but after
    `logit_bias` and the grammar's mask: a constrained row reports its constrained distribution.
    `rejection`: verify rows of sampled sequences whose drafts came with probabilities; their tokens are
    rejection-sampled against the rows' final distributions (speculative/rejection.py).
    """
    logprob_k = [r.params.logprobs for r in rows]
    want_logprobs = any(k is not None for k in logprob_k)
    logits = apply_token_mask(apply_logit_bias(logits, [r.params.logit_bias for r in rows]), mask, finite=want_logprobs)
    raw_logprobs = torch.log_softmax(logits, dim=-1) if want_logprobs else None  # [S, V]
    logits = _apply_penalties(logits, rows)
    tokens = torch.argmax(logits, dim=-1)  # [S]
    if not all(r.params.is_greedy for r in rows):
        greedy = to_device([r.params.is_greedy for r in rows], torch.bool, logits.device)  # [S]
        temperature = _column(rows, lambda p: p.temperature if not p.is_greedy else 1.0, logits.device)[:, None]
        probs = _filter(logits / temperature, rows)
        drawn = torch.argmax(probs / _exponential_noise(probs, rows, default_generator), dim=-1)  # [S]
        tokens = torch.where(greedy, tokens, drawn)
        if rejection:
            tokens = apply_rejection(tokens, probs, rejection)
    out = SampledBatch(tokens, logprob_k)
    if want_logprobs:
        out.chosen_logprobs = raw_logprobs.gather(1, tokens[:, None])[:, 0]  # [S]
        k_max = max(k or 0 for k in logprob_k)
        if k_max:
            out.top_values, out.top_ids = torch.topk(raw_logprobs, k_max, dim=-1)  # [S, k_max]
    return out


def sample(
    logits: torch.Tensor, rows: list[SamplingInput], default_generator: torch.Generator | None = None
) -> tuple[list[int], list[TokenLogprob | None]]:
    """sample_on_device, then read the result on the host."""
    return sample_on_device(logits, rows, default_generator).to_host()
