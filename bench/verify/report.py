"""The table `make verify` prints, and its one-line verdict."""

from __future__ import annotations

from .compare import PerplexityFigures, PooledFigures, PromptFigures
from .thresholds import Thresholds

HEADER = (
    "prompt",
    "positions",
    "greedy",
    "top-1 (all)",
    "top-1 (decisive)",
    "greedy = ref",
    "max |Δ logit|",
    "rel. error",
    "result",
)


def table(
    rows: list[PromptFigures],
    pooled: PooledFigures,
    ppl: PerplexityFigures,
    dtype: str,
    limits: Thresholds,
    top1_against: str,
) -> str:
    cells = [HEADER] + [
        (
            r.name,
            str(r.positions),
            str(r.greedy_steps),
            f"{r.top1:.1%}",
            f"{r.decisive_top1:.1%} of {r.decisive}",
            f"{r.greedy_agree}/{r.greedy_steps}",
            f"{r.max_abs_error:.3g}",
            f"{r.max_logit_error:.2e}",
            "pass" if r.passed else "FAIL: " + "; ".join(r.failures),
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER) - 1)]
    lines = ["  ".join(c[i].ljust(w) for i, w in enumerate(widths)) + "  " + c[-1] for c in cells]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    lines.append(
        f"top-1 agreement over all prompts' decisive positions: {pooled.share:.1%} of {pooled.decisive}"
        + ("" if not pooled.failures else "  FAIL")
    )
    lines.append(
        f"perplexity on the fixed text: ours {ppl.ours:.4g}, reference {ppl.theirs:.4g}, change {ppl.change:+.3%}"
        + ("" if not ppl.failures else "  FAIL")
    )
    error = (
        f"max logit error <= {limits.max_logit_error:.0e} of the largest reference logit"
        if limits.max_logit_error is not None
        else "max logit error reported, not judged"
    )
    lines.append(
        f"thresholds for {dtype}: top-1 agreement with {top1_against} >= {limits.min_top1:.0%} over all prompts "
        f"(per prompt: its 95% upper bound) where its top two "
        f"logits differ by more than {limits.tie_margin:g}, {error}, perplexity change within ±{limits.max_ppl_change:.1%}"
    )
    return "\n".join(lines)


def verdict(
    rows: list[PromptFigures], pooled: PooledFigures, ppl: PerplexityFigures, engine: str, reference: str
) -> tuple[bool, str]:
    failures = [f"{r.name}: {f}" for r in rows for f in r.failures] + list(pooled.failures) + list(ppl.failures)
    if failures:
        return False, f"verify FAILED: {engine} against {reference}: " + "; ".join(failures)
    return True, f"verify passed: {engine} agrees with {reference} on every prompt"
