"""Sampled requests with speculation keep the target's law through the real engine (issue 16).

test_rejection_sampler.py checks the rejection rule on its own; here the whole road runs: the policy,
the drafter, the scheduler's verify rows, `verify_rows.rejection_groups` -> `sampler.apply_rejection`
inside the engine's step, `accepted_run`, the KV rollback and the next step's drafting from what was
kept. Many seeded requests of one prompt (temperature > 0, top_k 2, four tokens each) run through the
tiny random dense engine with and without speculation; every token after the first is produced by a
verify step (rows after drafts, or the token drawn after the kept ones), so the joint law of the four
tokens (at most 2^4 outcomes) must be the same in both: a two-sample chi-square test over the outcome
counts. The p-value comes from torch's regularized incomplete gamma (no scipy here).

Drafters: `ngram` and `mtp` (a random drafter converted into a copy of the engine as `ASSISTANT=random`
does) propose deterministic drafts: the engine draws each row and keeps equal drafts. A test drafter
that samples its drafts from a distribution skewed away from the target's (and hands its rows over)
drives the rejection-sampling path, which no shipped drafter takes yet. The seeds are fixed, so each
outcome is reproducible (p = 0.39, 0.86 and 0.17 on 2026-12-02). Checked to fail when `apply_rejection`
keeps every draft (p ~ 1e-60), draws the residual from p instead of p - q (p ~ 2e-8), and when the accept
rule keeps every deterministic draft (ngram p ~ 1e-31, mtp ~ 1e-244).
"""

from __future__ import annotations

import random
import shutil
from collections import Counter

import pytest
import torch

import gemma_runtime.executor.sampler as sampler_module
from bench.spec_decode import attach_random_drafter
from gemma_runtime.api import GenerateRequest, SamplingParams
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine
from gemma_runtime.speculative import registry
from gemma_runtime.speculative.protocol import Draft

PROMPT = "red green blue yellow " * 3
REQUESTS = 600  # per engine: ~2 s each on 2 cores; a keep-every-draft bug gives p-values far below 1e-12
TOKENS = 4
ALPHA = 1e-3


def sampled(seed: int) -> SamplingParams:
    return SamplingParams(max_tokens=TOKENS, temperature=1.0, top_k=2, seed=seed, ignore_eos=True)


def greedy() -> SamplingParams:
    return SamplingParams(max_tokens=TOKENS, temperature=0.0, ignore_eos=True)


def engine(engine_dir, spec: str) -> LLMEngine:
    """Every request decodes in one batch, and the batch limit lets all of them draft."""
    config = RuntimeConfig(
        block_size=4,
        max_model_len=96,
        max_num_seqs=REQUESTS + 8,
        max_num_batched_tokens=4096,
        speculative=spec,
        num_speculative_tokens=3,
        speculative_max_batch=REQUESTS + 8,
    )
    return LLMEngine(engine_dir, config)


def run(e: LLMEngine, seeds: range, greedy_requests: int = 0) -> tuple[list[tuple[int, ...]], dict]:
    """The sampled requests' outputs (in seed order) and the greedy ones' (by id), all in one batch."""
    free = e.blocks.num_free
    for s in seeds:
        e.add_request(GenerateRequest(f"s{s}", PROMPT, sampled(s)))
    for i in range(greedy_requests):  # g0 shares the sampled prompt (and so the test drafter's drafts)
        e.add_request(GenerateRequest(f"g{i}", PROMPT + (f" {i}" if i else ""), greedy()))
    got: dict[str, list[int]] = {}
    while e.has_unfinished():
        for out in e.step():
            got.setdefault(out.request_id, []).extend(out.token_ids)
    assert e.blocks.num_free == free, "every page back once the requests end"
    outcomes = [tuple(got[f"s{s}"]) for s in seeds]
    assert all(len(o) == TOKENS for o in outcomes)
    return outcomes, {k: v for k, v in got.items() if k.startswith("g")}


def chi_square_p(a: Counter, b: Counter, min_count: int = 10) -> float:
    """Two-sample chi-square test of homogeneity over the outcomes of a and b (a 2 x K table); outcomes
    seen fewer than min_count times in both together share one cell, so no expected count is tiny."""
    total = a + b
    common = [k for k, n in total.items() if n >= min_count]
    rare = [k for k in total if k not in common]
    rows = [[c[k] for k in common] + ([sum(c[k] for k in rare)] if rare else []) for c in (a, b)]
    table = torch.tensor(rows, dtype=torch.float64)  # [2, K]
    expected = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / table.sum()
    stat = ((table - expected) ** 2 / expected).sum()
    dof = table.shape[1] - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), stat / 2))


@pytest.fixture(scope="module")
def mtp_engine_dir(random_tiny_dense_engine_dir, tmp_path_factory):
    """A copy of the tiny dense engine with a random MTP drafter converted in, as ASSISTANT=random does."""
    root = tmp_path_factory.mktemp("spec-sampling")
    engine_dir = root / "engine"
    shutil.copytree(random_tiny_dense_engine_dir, engine_dir)
    attach_random_drafter(engine_dir, root)
    return engine_dir


@pytest.fixture(scope="module")
def plain(mtp_engine_dir):
    """The plain engine's outcomes (seeds 0..REQUESTS-1) and its greedy answers."""
    return run(engine(mtp_engine_dir, "off"), range(REQUESTS), greedy_requests=4)


class SkewedDrafter:
    """Drafts sampled from a distribution that is not the target's: at each output prefix the plain
    run saw, 3/4 of the mass on the next token it saw least often there and the rest on the others.
    It hands its rows over (`Draft.probs`), so sampled requests take the rejection-sampling path.
    Rows are made once per prefix and drawn on the host: thousands of tiny torch ops per step would
    cost more than the engine's own step on a busy CPU."""

    def __init__(self, prompt_len: int, outcomes: list[tuple[int, ...]], vocab: int):
        self.prompt_len = prompt_len
        seen: dict[tuple[int, ...], Counter] = {}
        for o in outcomes:
            for i in range(1, len(o)):
                seen.setdefault(o[:i], Counter())[o[i]] += 1
        self.q: dict[tuple[int, ...], tuple[list[int], list[float], torch.Tensor]] = {}
        for prefix, counts in seen.items():
            tokens = sorted(counts, key=lambda t: (counts[t], t))  # the rarest first
            weights = [0.75] + [0.25 / (len(tokens) - 1)] * (len(tokens) - 1) if len(tokens) > 1 else [1.0]
            row = torch.zeros(vocab)
            row[tokens] = torch.tensor(weights)
            self.q[prefix] = (tokens, weights, row)
        self.rng = random.Random(0)

    def propose(self, requests):
        drafts = []
        for r in requests:
            prefix, ids, rows = tuple(r.token_ids[self.prompt_len :]), [], []
            while len(ids) < r.max_tokens and prefix in self.q:
                tokens, weights, row = self.q[prefix]
                ids.append(self.rng.choices(tokens, weights)[0])
                rows.append(row)
                prefix += (ids[-1],)
            drafts.append(Draft(ids, torch.stack(rows) if rows else None))
        return drafts

    def release(self, request_id: str) -> None:
        pass


@pytest.mark.parametrize("method", ["ngram", "mtp"])
def test_deterministic_drafts_keep_the_targets_law(mtp_engine_dir, plain, method):
    e = engine(mtp_engine_dir, method)
    outcomes, greedy_out = run(e, range(REQUESTS, 2 * REQUESTS), greedy_requests=4)
    assert chi_square_p(Counter(plain[0]), Counter(outcomes)) > ALPHA
    stats = e.stats()
    # the real drafters: ngram's drafts are often kept here, the random drafter's next to never (random
    # weights), so its verify steps test rejection and rollback
    assert stats.spec_decode_drafted > REQUESTS // 2
    if method == "ngram":
        assert stats.spec_decode_accepted > REQUESTS // 10
    assert greedy_out == plain[1], "greedy rows beside sampled verify rows stay the target's argmax"


def test_drafts_with_probabilities_are_rejection_sampled_in_the_engine(mtp_engine_dir, plain, monkeypatch):
    probe = engine(mtp_engine_dir, "off")
    prompt_len = len(probe.prepare(GenerateRequest("p", PROMPT, sampled(0))).token_ids)
    drafter = SkewedDrafter(prompt_len, plain[0], probe.spec.text.vocab_size)
    monkeypatch.setitem(registry.DRAFTERS, "ngram", lambda ctx: drafter)
    groups, real = [], sampler_module.apply_rejection

    def counted(tokens, probs, rejection):
        groups.append(len(rejection))
        return real(tokens, probs, rejection)

    monkeypatch.setattr(sampler_module, "apply_rejection", counted)
    e = engine(mtp_engine_dir, "ngram")
    assert e.speculation.drafter is drafter
    outcomes, greedy_out = run(e, range(REQUESTS, 2 * REQUESTS), greedy_requests=4)
    # the drafts alone follow another law: kept as drafted, the outcomes would differ from the target's
    assert chi_square_p(Counter(plain[0]), Counter(outcomes)) > ALPHA
    stats = e.stats()
    # each sampled request's first verify step at least is one rejection group
    assert sum(groups) >= REQUESTS, "the sampled requests' verify rows went through apply_rejection"
    assert stats.spec_decode_accepted > REQUESTS // 4 and stats.spec_decode_drafted > stats.spec_decode_accepted
    assert greedy_out == plain[1], "greedy requests ignore the drafts' probabilities"
