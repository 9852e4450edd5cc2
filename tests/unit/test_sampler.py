import math

import pytest
import torch

from gemma_runtime.api import SamplingParams
from gemma_runtime.executor.sampler import SamplingInput, sample


def rows(params: SamplingParams, n=1, outputs=(), seed=None):
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return [SamplingInput(params, list(outputs), gen) for _ in range(n)]


def draw(logits, params, n=400, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [sample(logits[None].clone(), [SamplingInput(params, [], gen)])[0][0] for _ in range(n)]


def test_greedy_takes_the_argmax():
    logits = torch.tensor([[0.1, 3.0, 2.9], [5.0, 0.0, 0.0]])
    tokens, _ = sample(logits, rows(SamplingParams(), n=2))
    assert tokens == [1, 0]


def test_top_k_limits_the_support():
    logits = torch.tensor([3.0, 2.9, 2.8, -1.0, -1.0])
    assert set(draw(logits, SamplingParams(temperature=1.0, top_k=2))) <= {0, 1}


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    got = set(draw(logits, SamplingParams(temperature=1.0, top_p=0.7)))
    assert got == {0, 1}


def test_min_p_drops_unlikely_tokens():
    logits = torch.log(torch.tensor([0.6, 0.3, 0.05, 0.05]))
    got = set(draw(logits, SamplingParams(temperature=1.0, min_p=0.2)))
    assert got == {0, 1}


def test_seed_reproduces_and_different_seeds_differ():
    logits = torch.zeros(1, 1000)
    p = SamplingParams(temperature=1.0, seed=7)
    assert sample(logits, rows(p, seed=7))[0] == sample(logits, rows(p, seed=7))[0]
    seq_a = draw(logits[0], SamplingParams(temperature=1.0), n=20, seed=1)
    seq_b = draw(logits[0], SamplingParams(temperature=1.0), n=20, seed=1)
    seq_c = draw(logits[0], SamplingParams(temperature=1.0), n=20, seed=2)
    assert seq_a == seq_b and seq_a != seq_c


def test_penalties_push_repeated_tokens_down():
    logits = torch.tensor([[2.0, 1.9, 0.0]])
    tokens, _ = sample(logits, rows(SamplingParams(frequency_penalty=0.5), outputs=[0]))
    assert tokens == [1]
    tokens, _ = sample(logits, rows(SamplingParams(presence_penalty=0.2), outputs=[0, 0, 0]))
    assert tokens == [1]
    tokens, _ = sample(logits, rows(SamplingParams(frequency_penalty=0.04), outputs=[0, 0]))
    assert tokens == [0]  # 2.0 - 2 * 0.04 still beats 1.9
    tokens, _ = sample(logits, rows(SamplingParams(presence_penalty=0.2), outputs=[]))
    assert tokens == [0]


def test_logprobs_are_the_model_distribution():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    _, lps = sample(logits, rows(SamplingParams(logprobs=2, temperature=0.5, frequency_penalty=1.0), outputs=[2]))
    expected = torch.log_softmax(logits[0], -1)
    (lp,) = lps
    # Penalties and temperature shape the draw, not the reported logprobs.
    assert math.isclose(lp.logprob, float(expected[lp.token_id]), rel_tol=1e-6)
    assert [t for t, _ in lp.top] == [2, 1]
    assert math.isclose(lp.top[0][1], float(expected[2]), rel_tol=1e-6)


@pytest.mark.parametrize(
    "kwargs", [dict(max_tokens=0), dict(temperature=-1), dict(top_p=0), dict(min_p=2), dict(logprobs=21)]
)
def test_bad_params_are_refused(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


def test_draws_follow_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.2])
    got = draw(torch.log(probs), SamplingParams(temperature=1.0), n=3000, seed=3)
    freq = torch.bincount(torch.tensor(got), minlength=3).float() / len(got)
    assert torch.allclose(freq, probs, atol=0.03)


def test_temperature_sharpens_and_flattens():
    logits = torch.log(torch.tensor([0.6, 0.4]))
    cold = draw(logits, SamplingParams(temperature=0.25), n=2000, seed=4)
    hot = draw(logits, SamplingParams(temperature=4.0), n=2000, seed=4)
    assert cold.count(0) / 2000 > 0.75 and abs(hot.count(0) / 2000 - 0.525) < 0.05


def test_mixed_batch_and_seeded_rows_do_not_depend_on_their_neighbours():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    seeded = SamplingParams(temperature=1.0, seed=5)
    alone, _ = sample(logits[1:2].clone(), [SamplingInput(seeded, [], torch.Generator().manual_seed(5))])
    batch = [
        SamplingInput(SamplingParams(), [], None),  # greedy
        SamplingInput(seeded, [], torch.Generator().manual_seed(5)),
        SamplingInput(SamplingParams(temperature=1.0, top_k=3), [], None),
    ]
    tokens, _ = sample(logits.clone(), batch, torch.Generator().manual_seed(123))
    assert tokens[0] == int(torch.argmax(logits[0]))
    assert tokens[1] == alone[0]
    assert tokens[2] in torch.topk(logits[2], 3).indices.tolist()
