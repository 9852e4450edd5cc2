"""Rejection sampling of drafts (Leviathan et al. 2023; Chen et al. 2023): the emitted tokens follow
exactly the target's distribution whatever the drafter proposed.

Draft i (drawn from q_i) is kept with probability min(1, p_i(x) / q_i(x)); at the first rejection a
token is drawn from the residual max(0, p_i - q_i) (normalised) and the run ends; when every draft is
kept, one more token is drawn from p_n. A deterministic draft (q_i one-hot on x) is kept with
probability p_i(x) and the residual is p_i without x: the same law as drawing y ~ p_i and keeping the
draft iff y == x, which is what the engine's verify step does for such drafts (verify.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def one_hot_probs(draft_ids: list[int], vocab: int) -> torch.Tensor:
    """The draft distribution of deterministic drafts: [n, V]."""
    q = torch.zeros(len(draft_ids), vocab)
    q[torch.arange(len(draft_ids)), torch.tensor(draft_ids, dtype=torch.int64)] = 1.0
    return q


def rejection_sample(
    target_probs: torch.Tensor,  # [n + 1, V] the target's (filtered, temperature-scaled) distributions
    draft_ids: list[int],  # [n]
    draft_probs: torch.Tensor,  # [n, V] the distributions the drafts were drawn from
    generator: torch.Generator | None = None,
) -> list[int]:
    """The tokens to emit: the kept drafts, then one drawn token (the residual's or the bonus)."""
    p = target_probs.float()
    q = draft_probs.to(p)
    n = len(draft_ids)
    uniforms = torch.rand(n, generator=generator, device=p.device)  # [n]
    for i, x in enumerate(draft_ids):
        px, qx = p[i, x], q[i, x]
        if qx > 0 and uniforms[i] * qx <= px:  # kept with probability min(1, px / qx)
            continue
        residual = (p[i] - q[i]).clamp_min(0.0)  # [V]
        total = residual.sum()
        residual = residual / total if total > 0 else p[i]
        return [*draft_ids[:i], int(torch.multinomial(residual, 1, generator=generator))]
    return [*draft_ids, int(torch.multinomial(p[n], 1, generator=generator))]


@dataclass(frozen=True)
class RejectionGroup:
    """A sampled sequence's verify rows whose drafts came with probabilities: rows [row, row + n]."""

    row: int
    draft_ids: list[int]
    draft_probs: torch.Tensor  # [n, V]
    generator: torch.Generator | None


def apply_rejection(tokens: torch.Tensor, probs: torch.Tensor, groups: list[RejectionGroup]) -> torch.Tensor:
    """tokens [R] (one sample per row), probs [R, V] the rows' target distributions: each group's rows
    get its rejection-sampled run written from its first row (verify.accepted_run then finds it: a
    drawn residual token never equals the rejected draft, whose residual mass is 0)."""
    tokens = tokens.clone()
    for g in groups:
        n = len(g.draft_ids)
        run = rejection_sample(probs[g.row : g.row + n + 1], g.draft_ids, g.draft_probs, g.generator)
        tokens[g.row : g.row + len(run)] = torch.tensor(run, dtype=tokens.dtype, device=tokens.device)
    return tokens
