"""The sampler's filters and penalties pinned down exactly: top-k keeps all k tokens reachable (not just
draws inside the top k), and the presence penalty is a flat step while the frequency penalty scales with
the count, on logits crafted so each margin decides the greedy token one way or the other."""

from __future__ import annotations

import pytest
import torch

from gemma_runtime.api import SamplingParams
from gemma_runtime.executor.sampler import SamplingInput, sample

# Four near-equal leaders, then two tokens far behind: top-k's support is exactly the first k.
LEADERS = torch.tensor([3.0, 2.9, 2.8, 2.7, -6.0, -6.0])


def support(logits: torch.Tensor, params: SamplingParams, n: int = 300, seed: int = 0) -> set[int]:
    gen = torch.Generator().manual_seed(seed)
    return {sample(logits[None].clone(), [SamplingInput(params, [], gen)])[0][0] for _ in range(n)}


@pytest.mark.parametrize("k", [2, 3, 4])
def test_top_k_support_is_exactly_the_k_most_likely(k):
    # Each of the k leaders has probability >= 0.2 here: 300 draws miss one with odds below 1e-20.
    assert support(LEADERS, SamplingParams(temperature=1.0, top_k=k)) == set(range(k))


def test_top_k_rows_of_one_batch_keep_their_own_k():
    gen = torch.Generator().manual_seed(1)
    seen: list[set[int]] = [set(), set()]
    batch = [
        SamplingInput(SamplingParams(temperature=1.0, top_k=2), [], None),
        SamplingInput(SamplingParams(temperature=1.0, top_k=4), [], None),
    ]
    for _ in range(300):
        tokens, _ = sample(torch.stack([LEADERS, LEADERS]), batch, gen)
        for row, token in enumerate(tokens):
            seen[row].add(token)
    assert seen == [{0, 1}, {0, 1, 2, 3}]


def test_top_k_at_least_the_vocabulary_is_off():
    assert support(LEADERS[:4], SamplingParams(temperature=1.0, top_k=4)) == {0, 1, 2, 3}
    assert support(LEADERS[:4], SamplingParams(temperature=1.0, top_k=10)) == {0, 1, 2, 3}


# Token 0 leads token 1 by 0.5: it keeps the lead while its total penalty stays under 0.5.
CRAFTED = torch.tensor([[2.0, 1.5, 0.0]])


def greedy_after(outputs: list[int], **penalties) -> int:
    tokens, _ = sample(CRAFTED.clone(), [SamplingInput(SamplingParams(**penalties), outputs, None)])
    return tokens[0]


@pytest.mark.parametrize("count", [1, 2, 3, 5])
@pytest.mark.parametrize("penalty", [0.2, 0.3, 0.45, 0.6])
def test_presence_penalty_is_the_same_for_any_count(count, penalty):
    expected = 0 if penalty < 0.5 else 1
    assert greedy_after([0] * count, presence_penalty=penalty) == expected


@pytest.mark.parametrize("count", [1, 2, 3, 5])
@pytest.mark.parametrize("penalty", [0.2, 0.3, 0.45, 0.6])
def test_frequency_penalty_grows_with_the_count(count, penalty):
    expected = 0 if penalty * count < 0.5 else 1
    assert greedy_after([0] * count, frequency_penalty=penalty) == expected


@pytest.mark.parametrize("count", [1, 2, 4])
def test_presence_and_frequency_add_up(count):
    # 2.0 - 0.1 * count - 0.25 against 1.5: token 0 holds for counts 1 and 2, loses at 4 (2.0 - 0.65)
    expected = 0 if 0.1 * count + 0.25 < 0.5 else 1
    assert greedy_after([0] * count, frequency_penalty=0.1, presence_penalty=0.25) == expected


def test_penalties_count_only_the_penalised_token():
    # Token 1 repeated, token 0 once: presence 0.3 lowers both by 0.3 (0 still wins, 1.7 > 1.2);
    # frequency 0.3 lowers 0 by 0.3 and 1 by 1.2.
    assert greedy_after([1, 1, 1, 1, 0], presence_penalty=0.3) == 0
    assert greedy_after([1, 1, 1, 0], frequency_penalty=0.3) == 0
    assert greedy_after([1, 1, 1], presence_penalty=0.6) == 0  # only token 1 penalised


def test_min_p_is_relative_to_the_most_likely_token():
    # Flat top: min_p 0.4 of the top probability 0.3 keeps everything from 0.12 up; an absolute 0.4
    # cut-off would keep nothing.
    logits = torch.log(torch.tensor([0.3, 0.25, 0.2, 0.15, 0.1]))
    assert support(logits, SamplingParams(temperature=1.0, min_p=0.4)) == {0, 1, 2, 3}
    assert support(logits, SamplingParams(temperature=1.0, min_p=0.6)) == {0, 1, 2}  # cut at 0.18
