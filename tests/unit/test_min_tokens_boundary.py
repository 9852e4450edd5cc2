"""`min_tokens` against stop tokens, with the stop token landing exactly on the boundary.

As in vLLM and OpenAI-compatible servers: a stop token counts only once `min_tokens` tokens came before
it, so a stop token that would be token number `min_tokens` is kept going past, and one that would be
token number `min_tokens + 1` ends the request. Greedy decoding of the tiny random engine gives a known
token sequence; a token of it becomes the stop token.
"""

from __future__ import annotations

import pytest

from gemma_runtime.api import GenerateRequest, SamplingParams
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine

PROMPT = "<bos><|turn>user\nTell me a story about the sea.<turn|>\n<|turn>model\n"
MAX_TOKENS = 30


@pytest.fixture(scope="module", params=["sync", "overlap"])
def engine(random_tiny_engine_dir, request):
    fast = dict(overlap_scheduling=True) if request.param == "overlap" else {}
    return LLMEngine(random_tiny_engine_dir, RuntimeConfig(block_size=4, max_model_len=128, **fast))


def run(engine: LLMEngine, name: str, params: SamplingParams):
    engine.add_request(GenerateRequest(name, PROMPT, params))
    outs = []
    while engine.has_unfinished():
        outs += [o for o in engine.step() if o.request_id == name]
    return [t for o in outs for t in o.token_ids], outs[-1]


@pytest.fixture(scope="module")
def reference(engine):
    ids, _ = run(engine, "ref", SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True))
    # A token first seen at 1-based position n >= 3: its first occurrence is where it would stop.
    n, stop = next((i + 1, t) for i, t in enumerate(ids) if i >= 2 and t not in ids[:i])
    assert not engine.stop_token_ids & set(ids[:n]), "the engine's own stop ids would end it first"
    return ids, n, stop


def expected_with(engine: LLMEngine, ids: list[int], stop: int, min_tokens: int) -> tuple[list[int], str]:
    """The first stop token (ours or the engine's own: eos, end of turn) after min_tokens tokens ends the
    output; otherwise max_tokens does."""
    stops = engine.stop_token_ids | {stop}
    for i, t in enumerate(ids):
        if t in stops and i + 1 > min_tokens:
            return ids[: i + 1], "stop"
    return ids, "length"


@pytest.mark.parametrize("shift", [-2, -1, 0, 1])
def test_stop_token_on_and_around_the_min_tokens_boundary(engine, reference, shift):
    ids, n, stop = reference
    min_tokens = n + shift  # shift 0: the stop token is token number min_tokens exactly
    got, last = run(
        engine, f"m{shift}", SamplingParams(max_tokens=MAX_TOKENS, min_tokens=min_tokens, stop_token_ids=(stop,))
    )
    want, reason = expected_with(engine, ids, stop, min_tokens)
    assert got == want and last.finish_reason == reason
    if shift < 0:
        assert len(got) == n  # at most min_tokens - 1 tokens before it: n - 1 >= min_tokens, so it stops
    else:
        assert len(got) > n  # the boundary (and beyond) goes past the first stop token


def test_min_tokens_zero_stops_at_the_first_stop_token(engine, reference):
    ids, n, stop = reference
    got, last = run(engine, "z", SamplingParams(max_tokens=MAX_TOKENS, stop_token_ids=(stop,)))
    assert got == ids[:n] and last.finish_reason == "stop" and last.stop_reason == stop
