"""Speculative decoding (ngram) in the engine against the same engine without it, on the tiny random
dense engine (sliding window 8, 4-token pages): what requests see is identical for greedy requests
(stop ids and strings, min_tokens, max_tokens landing inside a kept run, logprobs, prefix caching,
structured output), sampled requests finish sound, aborts and ends give every page back, and the
per-step policy turns drafting off above its batch size."""

from __future__ import annotations

import json

import pytest

from gemma_runtime.api import GenerateRequest, SamplingParams
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine
from gemma_runtime.grammar.spec import StructuredOutput

PATTERN = "red green blue yellow " * 6


def engine(engine_dir, spec: str, **kw) -> LLMEngine:
    base = dict(block_size=4, max_model_len=256, max_num_batched_tokens=32)
    return LLMEngine(engine_dir, RuntimeConfig(speculative=spec, num_speculative_tokens=3, **{**base, **kw}))


def run(e: LLMEngine, requests: list[GenerateRequest]) -> dict:
    """request id -> (token ids, text, finish reason, stop reason, logprobs)."""
    for r in requests:
        e.add_request(r)
    got = {r.request_id: [[], "", None, None, []] for r in requests}
    while e.has_unfinished():
        for out in e.step():
            g = got[out.request_id]
            g[0] += out.token_ids
            g[1] += out.text
            g[4] += [(lp.token_id, lp.logprob, [t for t, _ in lp.top]) for lp in out.logprobs or ()]
            if out.finished:
                g[2], g[3] = out.finish_reason, out.stop_reason
    return {k: tuple(v[:4]) + (v[4],) for k, v in got.items()}


def greedy(**kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, **{"max_tokens": 30, "ignore_eos": True, **kw})


@pytest.fixture(scope="module")
def reference(random_tiny_dense_engine_dir):
    """The plain engine's free greedy output of the pattern prompt: stops are picked from it."""
    e = engine(random_tiny_dense_engine_dir, "off")
    return run(e, [GenerateRequest("ref", PATTERN, greedy(max_tokens=40))])["ref"]


def both(engine_dir, requests_fn, **kw):
    plain, spec = engine(engine_dir, "off", **kw), engine(engine_dir, "ngram", **kw)
    free = spec.blocks.num_free
    a, b = run(plain, requests_fn()), run(spec, requests_fn())
    assert spec.blocks.num_free == free, "every page back once the requests end"
    return a, b, spec.stats()


def test_stops_min_tokens_max_tokens_and_logprobs_are_unchanged(random_tiny_dense_engine_dir, reference):
    tokens, text = reference[0], reference[1]
    stop_id = tokens[12]
    stop_str = text[len(text) // 2 : len(text) // 2 + 3]

    def requests():
        return [
            GenerateRequest("stop-id", PATTERN, greedy(stop_token_ids=(stop_id,), ignore_eos=False)),
            GenerateRequest("min-tokens", PATTERN, greedy(stop_token_ids=(stop_id,), min_tokens=14, ignore_eos=False)),
            GenerateRequest("stop-str", PATTERN, greedy(stop=(stop_str,))),
            GenerateRequest("logprobs", PATTERN, greedy(logprobs=3)),
            *[GenerateRequest(f"max-{n}", PATTERN, greedy(max_tokens=n)) for n in (1, 2, 5, 7, 11)],
        ]

    plain, spec, stats = both(random_tiny_dense_engine_dir, requests)
    assert {k: v[:4] for k, v in spec.items()} == {k: v[:4] for k, v in plain.items()}
    # logprobs: the same tokens and candidates; values as close as a verify row's arithmetic (the rows of
    # one forward) is to a decode row's
    ours, ref = spec["logprobs"][4], plain["logprobs"][4]
    assert [(t, top) for t, _, top in ours] == [(t, top) for t, _, top in ref] and len(ours) == 30
    assert max(abs(a[1] - b[1]) for a, b in zip(ours, ref)) < 1e-4
    assert stats.spec_decode_drafted > stats.spec_decode_accepted > 0
    for n in (1, 2, 5, 7, 11):
        assert len(spec[f"max-{n}"][0]) == n and spec[f"max-{n}"][2] == "length"
    assert spec["stop-id"][2] == "stop" and spec["stop-str"][2] == "stop"
    assert len(spec["stop-id"][0]) == tokens.index(stop_id) + 1
    assert len(spec["min-tokens"][0]) > 14 and spec["min-tokens"][0][-1] == stop_id


def test_prefix_caching_and_a_second_turn(random_tiny_dense_engine_dir):
    def requests():
        return [GenerateRequest("first", PATTERN, greedy())]

    e = engine(random_tiny_dense_engine_dir, "ngram")
    plain = engine(random_tiny_dense_engine_dir, "off")
    free = e.blocks.num_free
    first = run(e, [GenerateRequest("a", PATTERN, greedy())])["a"]
    again = run(e, [GenerateRequest("b", PATTERN, greedy())])["b"]
    assert first[0] == again[0] == run(plain, requests())["first"][0]
    assert e.stats().prefix_cache_hits > 0
    assert e.blocks.num_free == free


def test_structured_output_is_unchanged(random_tiny_dense_engine_dir, monkeypatch):
    """Drafts the grammar refuses are cut before the verify (counted through the real check)."""
    import gemma_runtime.speculative.engine_hooks as hooks

    cuts, real = [], hooks.grammar_prefix

    def counted(state, drafts):
        kept = real(state, drafts)
        cuts.append((drafts, len(kept)))
        return kept

    monkeypatch.setattr(hooks, "grammar_prefix", counted)
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "maxLength": 6}, "ok": {"type": "boolean"}},
        "required": ["colour", "ok"],
    }
    structured = StructuredOutput("json_schema", json.dumps(schema))

    def requests():
        return [
            GenerateRequest(f"s{i}", PATTERN + f" {i}", SamplingParams(max_tokens=60, structured=structured))
            for i in range(3)
        ]

    plain, spec, stats = both(random_tiny_dense_engine_dir, requests, max_model_len=512)
    assert spec == plain
    finished = [text for _, text, reason, *_ in spec.values() if reason == "stop"]
    assert finished and all(isinstance(json.loads(text), dict) for text in finished)
    assert stats.spec_decode_drafted > 0
    assert any(kept < len(ds) for ds, kept in cuts), "some drafts were meant to break the grammar"


def test_sampled_requests_and_abort_give_pages_back(random_tiny_dense_engine_dir):
    e = engine(random_tiny_dense_engine_dir, "ngram")
    free = e.blocks.num_free
    vocab = e.spec.text.vocab_size
    sampled = SamplingParams(max_tokens=25, temperature=0.8, top_k=20, seed=7, presence_penalty=0.3, ignore_eos=True)
    for i in range(3):
        e.add_request(GenerateRequest(f"s{i}", PATTERN, sampled))
    e.add_request(GenerateRequest("gone", PATTERN, greedy(max_tokens=150)))
    got = {f"s{i}": [] for i in range(3)}
    steps = 0
    while e.has_unfinished():
        for out in e.step():
            if out.request_id in got:
                got[out.request_id] += out.token_ids
        steps += 1
        if steps == 6:
            assert e.abort("gone").finish_reason == "abort"
    assert all(len(t) == 25 and all(0 <= x < vocab for x in t) for t in got.values())
    assert e.stats().spec_decode_drafted > 0
    assert e.blocks.num_free == free


def test_no_drafts_above_the_batch_limit(random_tiny_dense_engine_dir):
    # one step prefills all three, so all three decode together from then on
    together = dict(max_num_batched_tokens=512, enable_prefix_caching=False)
    e = engine(random_tiny_dense_engine_dir, "ngram", speculative_max_batch=2, **together)
    run(e, [GenerateRequest(f"r{i}", PATTERN, greedy(max_tokens=12)) for i in range(3)])
    assert e.stats().spec_decode_drafted == 0
    e = engine(random_tiny_dense_engine_dir, "ngram", speculative_max_batch=3, **together)
    run(e, [GenerateRequest(f"r{i}", PATTERN, greedy(max_tokens=12)) for i in range(3)])
    assert e.stats().spec_decode_drafted > 0


def test_image_prompts_are_unchanged(random_tiny_engine_dir):
    """Two images (soft-token spans that a prefill never splits) in a repetitive prompt on the tiny MoE
    engine with its vision tower: ngram drafts over the text, the verify step runs beside image
    prefills, and every request's output equals the plain engine's."""
    from PIL import Image

    def png(color) -> bytes:
        import io

        buf = io.BytesIO()
        Image.new("RGB", (40, 32), color).save(buf, format="PNG")
        return buf.getvalue()

    images = (png((200, 30, 30)), png((30, 30, 200)))

    def requests():
        return [
            GenerateRequest(
                "img", "<|image|> and <|image|> " + PATTERN, greedy(), images=images, image_max_soft_tokens=70
            ),
            GenerateRequest("txt", PATTERN, greedy(max_tokens=24)),
        ]

    a, b, stats = both(random_tiny_engine_dir, requests, max_num_batched_tokens=96, max_model_len=512)
    assert a == b
    assert stats.spec_decode_drafted > 0
