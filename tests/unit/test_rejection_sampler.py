"""The rejection sampler keeps the target's distribution exactly: chi-square over many seeded draws on
a tiny vocabulary, for drafts drawn from another distribution and for deterministic (one-hot) drafts.

The statistic is compared with fixed critical values (no scipy): for 4 degrees of freedom the 0.999
quantile of chi-square is 18.467, so a correct sampler fails one seed in a thousand and the seed is
fixed; a sampler off by a few percent on any token (e.g. keeping drafts with probability p/q unclipped,
or drawing the residual from p) gives statistics in the hundreds over 8000 draws.
"""

from __future__ import annotations

import torch

from gemma_runtime.speculative.rejection import one_hot_probs, rejection_sample

VOCAB = 5
DRAWS = 8000
CHI2_4DOF_999 = 18.467


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def _dists(seed: int, rows: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(rows, VOCAB, generator=g) * 1.5, dim=-1)  # [rows, V]


def _run(p: torch.Tensor, q: torch.Tensor | None, fixed_drafts: list[int] | None):
    """Emitted tokens' first and second positions over DRAWS trials (second only when two or more)."""
    g = torch.Generator().manual_seed(1234)
    first, second = torch.zeros(VOCAB), torch.zeros(VOCAB)
    for _ in range(DRAWS):
        if fixed_drafts is None:
            drafts = [int(torch.multinomial(q[i], 1, generator=g)) for i in range(q.shape[0])]
            draft_probs = q
        else:
            drafts, draft_probs = fixed_drafts, one_hot_probs(fixed_drafts, VOCAB)
        out = rejection_sample(p, drafts, draft_probs, g)
        assert 1 <= len(out) <= len(drafts) + 1
        first[out[0]] += 1
        if len(out) > 1:
            second[out[1]] += 1
    return first, second


def test_drafts_from_another_distribution_keep_the_targets_law():
    p, q = _dists(0, 3), _dists(1, 2)  # target rows 0..2, draft rows 0..1
    first, second = _run(p, q, None)
    assert chi_square(first, p[0]) < CHI2_4DOF_999
    assert second.sum() > DRAWS / 5  # drafts are kept often enough for the second position to be tested
    assert chi_square(second, p[1]) < CHI2_4DOF_999  # given the first draft kept, the next follows p_1


def test_deterministic_drafts_keep_the_targets_law():
    p = _dists(2, 3)
    first, second = _run(p, None, [int(p[0].argmax()), int(p[1].argmin())])
    assert chi_square(first, p[0]) < CHI2_4DOF_999
    assert chi_square(second, p[1]) < CHI2_4DOF_999


def test_the_test_can_fail():
    """The same statistic rejects a sampler that ignores the target (emits the draft distribution)."""
    p, q = _dists(0, 3), _dists(1, 2)
    g = torch.Generator().manual_seed(1)
    wrong = torch.bincount(torch.multinomial(q[0], DRAWS, replacement=True, generator=g), minlength=VOCAB).float()
    assert chi_square(wrong, p[0]) > 10 * CHI2_4DOF_999
