"""Our logits against the reference's: per-prompt figures and the verdict against the dtype's thresholds."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .scored import Scored
from .thresholds import Thresholds


@dataclass(frozen=True)
class PromptFigures:
    name: str
    positions: int  # rows compared: prompt + greedy steps
    greedy_steps: int
    top1: float  # share of all rows whose argmax agrees (printed)
    decisive_top1: float  # the same over the rows where the reference leads by more than the tie margin (judged)
    decisive: int  # how many rows those are
    decisive_agree: int  # how many of those agree
    greedy_agree: int  # of the greedy steps, how many tokens the reference also ranks first
    max_abs_error: float
    max_logit_error: float  # max_abs_error over the reference's largest |logit|
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class PerplexityFigures:
    ours: float
    theirs: float
    change: float  # ours / theirs - 1
    failures: tuple[str, ...]


def perplexity(scored: Scored) -> float:
    """exp(mean NLL) of token_ids[1:] under the logits of the rows before them."""
    ids = torch.tensor(scored.tokens.token_ids[1:])
    logp = torch.log_softmax(scored.logits[:-1].double(), dim=-1)  # [n-1, V] predicting ids[1:]
    return math.exp(-logp.gather(1, ids[:, None]).mean().item())


@dataclass(frozen=True)
class PooledFigures:
    """Top-1 agreement over every prompt's decisive positions together: the judged point estimate."""

    agree: int
    decisive: int
    failures: tuple[str, ...]

    @property
    def share(self) -> float:
        return self.agree / self.decisive if self.decisive else 1.0


def agreement_upper_bound(agree: int, n: int, z: float = 1.96) -> float:
    """The Wilson score interval's upper end (95% by default) for `agree` of `n`: the most the true
    agreement plausibly is, given so few positions. One prompt fails only when even that is below the
    threshold: 26 of 29 decisive positions (89.7%) is no evidence of an engine below 90%, since three flips
    in 29 is what 90% gives more often than not, while 20 of 29 (69%, bound 83%) is. The share itself is
    judged over all prompts together (pooled_figures), where there are enough positions to judge it."""
    if n == 0:
        return 1.0
    p = agree / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


def prompt_figures(ours: Scored, theirs: Scored, limits: Thresholds) -> PromptFigures:
    a, b = ours.logits, theirs.logits  # [n, V] each
    if a.shape != b.shape:
        raise RuntimeError(f"{ours.tokens.name}: logits of shape {tuple(a.shape)} against {tuple(b.shape)}")
    agree = a.argmax(-1) == b.argmax(-1)  # [n]
    top1 = agree.float().mean().item()
    best = b.topk(2, dim=-1).values  # [n, 2]
    decisive = best[:, 0] - best[:, 1] > limits.tie_margin  # [n]
    decisive_top1 = agree[decisive].float().mean().item() if decisive.any() else 1.0
    n_decisive = int(decisive.sum())
    top1_bound = agreement_upper_bound(int(agree[decisive].sum()), n_decisive)
    max_abs = (a - b).abs().max().item()
    rel = max_abs / max(b.abs().max().item(), 1e-30)
    p = ours.tokens.prompt_len
    steps = len(ours.tokens.token_ids) - p
    # row i predicts token i + 1: the greedy tokens are predicted by rows p-1 .. n-2
    greedy = torch.tensor(ours.tokens.token_ids[p:])
    greedy_agree = int((b[p - 1 : p - 1 + steps].argmax(-1) == greedy).sum()) if steps else 0
    failures = []
    if not top1_bound >= limits.min_top1:  # NaN fails too
        failures.append(
            f"top-1 agreement {decisive_top1:.1%} of {n_decisive} (at most {top1_bound:.1%}) < {limits.min_top1:.0%}"
        )
    if limits.max_logit_error is not None and not rel <= limits.max_logit_error:
        failures.append(f"max logit error {rel:.2e} > {limits.max_logit_error:.0e}")
    if not torch.isfinite(a).all():
        failures.append("non-finite logits")
    return PromptFigures(
        ours.tokens.name,
        a.shape[0],
        steps,
        top1,
        decisive_top1,
        n_decisive,
        int(agree[decisive].sum()),
        greedy_agree,
        max_abs,
        rel,
        tuple(failures),
    )


def perplexity_figures(ours: Scored, theirs: Scored, limits: Thresholds) -> PerplexityFigures:
    mine, ref = perplexity(ours), perplexity(theirs)
    change = mine / ref - 1
    failures = (
        ()
        if abs(change) <= limits.max_ppl_change
        else (f"perplexity change {change:+.2%} beyond ±{limits.max_ppl_change:.1%}",)
    )
    return PerplexityFigures(mine, ref, change, failures)


def pooled_figures(rows: list[PromptFigures], limits: Thresholds) -> PooledFigures:
    agree, n = sum(r.decisive_agree for r in rows), sum(r.decisive for r in rows)
    pooled = PooledFigures(agree, n, ())
    if pooled.share >= limits.min_top1:
        return pooled
    failure = f"top-1 agreement over all prompts {pooled.share:.1%} of {n} < {limits.min_top1:.0%}"
    return PooledFigures(agree, n, (failure,))
