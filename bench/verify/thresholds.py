"""Pass/fail thresholds of `make verify`, by engine dtype (a registry: a new dtype adds a row).

What each bounds, per prompt (all positions of the prompt and the greedy steps, teacher-forced):
- `min_top1`: the share of decisive positions where our most likely next token is transformers' (for
  an FP8 engine transformers runs the bf16 checkpoint: this is FP8's agreement with bf16). A position is
  decisive when the reference's best logit leads its runner-up by more than `tie_margin` logits: a
  rounding that moves logits by a fraction of a logit may flip a near-tie, and a flipped near-tie is no
  fault (both tokens are as good). The share is judged over all prompts' decisive positions together
  (a couple of hundred); one prompt alone has a few dozen, so it fails only when the Wilson 95% upper
  bound of its share is below `min_top1` (compare.agreement_upper_bound): three flips of 29 (89.7%) are
  what 90% gives more often than not, and say nothing about the engine;
- `max_logit_error`: the largest |ours - theirs| over every position and vocabulary entry, relative to
  the largest |logit| of the reference on that prompt; None: printed, not judged (one entry of millions
  says little about a rounded engine; the agreement and the perplexity do);
And on the fixed text: `max_ppl_change`, |ppl ours / ppl theirs - 1|.

float32 matches transformers to rounding (the parity tests hold it to 1e-4 relative), at every position.
bf16 rounds every weight (8 bits of mantissa), FP8 e4m3 more (3 bits, per-channel scales). Measured on
the tiny taught engine against its float32 checkpoint (tests/unit/test_verify.py; weights rounded,
float32 arithmetic): bf16 97.6-100% decisive agreement, perplexity -0.03%; FP8 97.4-100%, +0.2%.
Published FP8 checkpoints of this kind keep perplexity within ~1-2% of bf16.
On a model this small (hidden 64) FP8's own rounding moves the logits as far as a scale off by a factor
does (54-83% top-1 over all positions, perplexity -2.3% on the taught engine; gate_up scales x2 to x8 or
lost in every layer: 94-100% decisive, +1-4%): the check catches layout faults there (one layer's QKV rows
out of order: 43.8% decisive, +301%), and scale faults only on models whose FP8 rounding is small.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Thresholds:
    min_top1: float
    tie_margin: float  # logits: positions where the reference's top two are closer are not judged
    max_logit_error: float | None
    max_ppl_change: float


THRESHOLDS: dict[str, Thresholds] = {
    "float32": Thresholds(min_top1=0.99, tie_margin=0.0, max_logit_error=1e-3, max_ppl_change=0.001),
    "bfloat16": Thresholds(min_top1=0.95, tie_margin=1.0, max_logit_error=None, max_ppl_change=0.02),
    "fp8": Thresholds(min_top1=0.90, tie_margin=2.0, max_logit_error=None, max_ppl_change=0.05),
}


def engine_dtype_name(spec) -> str:
    """The engine's dtype as THRESHOLDS names it: the quantization method wins over the base dtype."""
    if spec.quantization is not None:
        return "fp8" if spec.quantization.method.startswith("fp8") else spec.quantization.method
    return spec.dtype
