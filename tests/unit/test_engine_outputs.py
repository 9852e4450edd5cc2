"""LLMEngine's output contract on a tiny random engine: text deltas, stops, lengths, logprobs, seeds."""

from __future__ import annotations

import pytest

from gemma_runtime.api import GenerateRequest, RequestError, SamplingParams
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.kv_sizing import block_bytes
from gemma_runtime.engine.llm_engine import LLMEngine

PROMPT = "<bos><|turn>user\nTell me a story about the sea.<turn|>\n<|turn>model\n"


@pytest.fixture(scope="module", params=["sync", "overlap+graphs"])
def engine(random_tiny_engine_dir, request):
    """Every contract holds both for the plain engine and for the GPU's decode path (overlapped steps,
    padded decode graphs; eager on the CPU)."""
    fast = dict(overlap_scheduling=True, decode_graph_max_batch=8) if request.param != "sync" else {}
    return LLMEngine(random_tiny_engine_dir, RuntimeConfig(block_size=4, max_model_len=256, **fast))


def run(engine: LLMEngine, request: GenerateRequest):
    engine.add_request(request)
    outs = []
    while engine.has_unfinished():
        outs += [o for o in engine.step() if o.request_id == request.request_id]
    return outs


def test_text_deltas_concatenate_to_the_decoded_output(engine):
    outs = run(engine, GenerateRequest("t", PROMPT, SamplingParams(max_tokens=40, ignore_eos=True)))
    ids = [t for o in outs for t in o.token_ids]
    assert len(ids) == 40 and outs[-1].finish_reason == "length" and outs[-1].finished
    assert all(not o.finished for o in outs[:-1])
    text = "".join(o.text for o in outs)
    assert text == engine.tokenizer.decode(ids, skip_special_tokens=False)
    assert outs[-1].usage.completion_tokens == 40
    assert outs[-1].usage.prompt_tokens == len(engine.tokenizer.encode(PROMPT, add_special_tokens=False))


def test_stop_string_cuts_the_text_and_is_held_back(engine):
    free = engine.stats().kv_blocks_free
    full = run(engine, GenerateRequest("a", PROMPT, SamplingParams(max_tokens=40, ignore_eos=True)))
    text = "".join(o.text for o in full)
    # A random model writes odd bytes: take a stop string made of whole characters from the middle.
    start = next(i for i in range(8, len(text) - 3) if "\ufffd" not in text[i : i + 3])
    stop = text[start : start + 3]
    outs = run(engine, GenerateRequest("b", PROMPT, SamplingParams(max_tokens=40, ignore_eos=True, stop=(stop,))))
    cut = "".join(o.text for o in outs)
    assert cut == text[: text.find(stop)]
    assert outs[-1].finish_reason == "stop" and outs[-1].stop_reason == stop
    outs = run(
        engine,
        GenerateRequest(
            "c", PROMPT, SamplingParams(max_tokens=40, ignore_eos=True, stop=(stop,), include_stop_str_in_output=True)
        ),
    )
    assert "".join(o.text for o in outs) == text[: text.find(stop) + len(stop)]
    assert engine.stats().kv_blocks_free == free


def test_stop_token_ends_without_text(engine):
    full = run(engine, GenerateRequest("d", PROMPT, SamplingParams(max_tokens=20, ignore_eos=True)))
    ids = [t for o in full for t in o.token_ids]
    stop_id = ids[5]
    outs = run(engine, GenerateRequest("e", PROMPT, SamplingParams(max_tokens=20, stop_token_ids=(stop_id,))))
    got = [t for o in outs for t in o.token_ids]
    first = ids.index(stop_id)
    assert got == ids[: first + 1]
    assert outs[-1].finish_reason == "stop" and outs[-1].stop_reason == stop_id
    assert "".join(o.text for o in outs) == engine.tokenizer.decode(ids[:first], skip_special_tokens=False)


def test_logprobs_and_seeded_sampling(engine):
    p = SamplingParams(max_tokens=12, temperature=1.0, seed=1234, logprobs=3, ignore_eos=True)
    a = run(engine, GenerateRequest("f", PROMPT, p))
    b = run(engine, GenerateRequest("g", PROMPT, p))
    c = run(
        engine, GenerateRequest("h", PROMPT, SamplingParams(max_tokens=12, temperature=1.0, seed=99, ignore_eos=True))
    )
    ids = lambda outs: [t for o in outs for t in o.token_ids]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)
    for o in a:
        (lp,) = o.logprobs
        assert lp.token_id == o.token_ids[0] and lp.logprob <= 0 and len(lp.top) == 3
        assert lp.top[0][1] >= lp.logprob


def test_too_long_prompts_are_refused(engine):
    with pytest.raises(RequestError, match="maximum context"):
        engine.prepare(GenerateRequest("x", [5] * 300, SamplingParams(max_tokens=1)))
    with pytest.raises(RequestError, match="max_tokens"):
        engine.prepare(GenerateRequest("x", [5] * 100, SamplingParams(max_tokens=200)))
    with pytest.raises(RequestError, match="image placeholders"):
        engine.prepare(GenerateRequest("x", "<|image|> hi", SamplingParams(max_tokens=1)))


def test_full_layer_pages_are_capped_by_the_kv_budget(random_tiny_engine_dir):
    """Every sequence at the full context when the budget allows; never fewer pages than one sequence needs."""

    def engine(kv_bytes):
        return LLMEngine(
            random_tiny_engine_dir,
            RuntimeConfig(block_size=4, max_model_len=256, max_num_seqs=8, kv_cache_bytes=kv_bytes),
        )

    one_sequence = 256 // 4
    assert engine(1 << 30).blocks.full.num_blocks == 8 * one_sequence
    e = engine(1)
    assert e.blocks.full.num_blocks == one_sequence
    # What the sliding pool leaves of the budget goes to full-layer pages.
    sliding_bytes = e.blocks.sliding.num_blocks * block_bytes(e.spec, 4, e.dtype, "sliding")
    assert engine(sliding_bytes + 100 * block_bytes(e.spec, 4, e.dtype, "full")).blocks.full.num_blocks == 100
