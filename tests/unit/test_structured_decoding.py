"""Constrained decoding in the runtime, on an untrained tiny engine (its free output is noise):
generated bounded schemas all validate and finish on a stop token, under every engine mode (plain,
overlapped, with preemption); the constraint is real (the same requests unconstrained are not JSON);
logprobs are of the constrained distribution; logit bias; refusals name the feature; aborts are clean.
"""

from __future__ import annotations

import json
import math

import jsonschema
import pytest

from gemma_runtime.api import GenerateRequest, RequestError, SamplingParams
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine
from gemma_runtime.grammar.spec import StructuredOutput
from tests.unit.structured_schemas import ALL_FEATURES, features, generated_schemas

PROMPT = "<bos><|turn>user\nReply in JSON.<turn|>\n<|turn>model\n"
SCHEMAS = generated_schemas()
MODES = {
    "plain": {},
    "overlap": dict(overlap_scheduling=True),
    "overlap+preemption": dict(overlap_scheduling=True, num_full_blocks=40, max_num_batched_tokens=32),
}


def engine_for(engine_dir, **kwargs) -> LLMEngine:
    return LLMEngine(engine_dir, RuntimeConfig(block_size=4, max_model_len=512, **kwargs))


def schema_request(i: int, schema: dict, **sampling) -> GenerateRequest:
    structured = StructuredOutput("json_schema", json.dumps(schema))
    return GenerateRequest(f"s{i}", PROMPT, SamplingParams(max_tokens=300, structured=structured, **sampling))


def run(engine: LLMEngine, requests: list[GenerateRequest]) -> dict[str, tuple[str, str | None, list]]:
    """request id -> (text, finish reason, outputs)."""
    for r in requests:
        engine.add_request(r)
    got = {r.request_id: ["", None, []] for r in requests}
    while engine.has_unfinished():
        for out in engine.step():
            entry = got[out.request_id]
            entry[0] += out.text
            entry[2].append(out)
            if out.finished:
                entry[1] = out.finish_reason
    return {k: tuple(v) for k, v in got.items()}


def test_the_generated_schemas_cover_every_feature():
    assert len(SCHEMAS) >= 30
    assert features(SCHEMAS) >= ALL_FEATURES


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_schema_validates_and_stops(random_tiny_dense_engine_dir, mode, monkeypatch):
    engine = engine_for(random_tiny_dense_engine_dir, **MODES[mode])
    preempted = []
    real = engine.scheduler._preempt
    monkeypatch.setattr(engine.scheduler, "_preempt", lambda seq: (preempted.append(seq.request_id), real(seq)))
    deferred = []  # steps whose sampling waited for the previous step's tokens (overlap)
    lags = engine.structured.lags
    monkeypatch.setattr(engine.structured, "lags", lambda scheduled: deferred.append(lags(scheduled)) or deferred[-1])
    # greedy for half, seeded sampling with top-k / top-p / min-p for the rest: every sampling path
    sampling = [
        dict() if i % 2 == 0 else dict(temperature=1.0, top_k=50, top_p=0.95, min_p=0.01, seed=i)
        for i in range(len(SCHEMAS))
    ]
    got = run(engine, [schema_request(i, s, **sampling[i]) for i, s in enumerate(SCHEMAS)])
    for i, schema in enumerate(SCHEMAS):
        text, reason, _ = got[f"s{i}"]
        assert reason == "stop", (i, text)
        jsonschema.validate(json.loads(text), schema)
    if "preemption" in mode:
        assert preempted, "the tight pool preempted nothing: grammar state across preemption is untested"
    assert any(deferred) == ("overlap" in mode)
    assert engine.stats().kv_blocks_free == engine.stats().kv_blocks_total


def test_the_constraint_is_real(random_tiny_dense_engine_dir):
    """The same requests without the grammar: the untrained model's text is not valid output."""
    engine = engine_for(random_tiny_dense_engine_dir)
    got = run(
        engine, [GenerateRequest(f"s{i}", PROMPT, SamplingParams(max_tokens=40)) for i in range(len(SCHEMAS[:8]))]
    )
    for i, schema in enumerate(SCHEMAS[:8]):
        text = got[f"s{i}"][0]
        with pytest.raises((json.JSONDecodeError, jsonschema.ValidationError)):
            jsonschema.validate(json.loads(text), schema)


def test_json_object_and_stop_strings_and_logprobs(random_tiny_dense_engine_dir):
    engine = engine_for(random_tiny_dense_engine_dir)
    small = {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green"]}, "n": {"type": "integer", "minimum": 1, "maximum": 3}},
        "required": ["color", "n"],
        "additionalProperties": False,
    }
    requests = [
        schema_request(0, small, logprobs=5),
        schema_request(1, small, stop=('"n"',)),  # a stop string still cuts a constrained reply
        GenerateRequest("obj", PROMPT, SamplingParams(max_tokens=8, structured=StructuredOutput("json_object"))),
    ]
    got = run(engine, requests)
    text, reason, outputs = got["s0"]
    assert reason == "stop"
    jsonschema.validate(json.loads(text), small)
    for out in outputs:
        for lp in out.logprobs:
            # the constrained distribution: every alternative has finite logprob, the sampled token
            # is the greedy top choice, and the allowed tokens' probabilities sum to at most one
            assert lp.top and lp.top[0][0] == lp.token_id and math.isfinite(lp.logprob)
            assert sum(math.exp(v) for _, v in lp.top) <= 1.0 + 1e-4
    assert got["s1"][1] == "stop" and got["s1"][0].startswith('{"color": "')
    text, reason, _ = got["obj"]
    assert text.startswith("{")  # json_object: an object is under way (8 tokens may not close it)


def test_logprobs_are_of_the_constrained_distribution(random_tiny_dense_engine_dir):
    engine = engine_for(random_tiny_dense_engine_dir)
    schema = {
        "type": "object",
        "properties": {"a": {"enum": ["x", "y"]}},
        "required": ["a"],
        "additionalProperties": False,
    }
    got = run(engine, [schema_request(0, schema, logprobs=20)])
    text, reason, outputs = got["s0"]
    assert reason == "stop" and json.loads(text)["a"] in ("x", "y")
    first = outputs[0].logprobs[0]
    # the first token must open the object: the few allowed tokens hold all the mass, the rest none
    allowed = [v for _, v in first.top if v > -1e30]
    assert allowed and len(allowed) < len(first.top)
    assert abs(sum(math.exp(v) for v in allowed) - 1.0) < 1e-4


def test_logit_bias(random_tiny_dense_engine_dir):
    engine = engine_for(random_tiny_dense_engine_dir)
    free = run(engine, [GenerateRequest("free", PROMPT, SamplingParams(max_tokens=6, ignore_eos=True))])["free"][2]
    free_ids = [t for o in free for t in o.token_ids]
    forced, banned = 77, free_ids[0]
    got = run(
        engine,
        [
            GenerateRequest(
                "forced", PROMPT, SamplingParams(max_tokens=6, ignore_eos=True, logit_bias=((forced, 100.0),))
            ),
            GenerateRequest(
                "banned", PROMPT, SamplingParams(max_tokens=6, ignore_eos=True, logit_bias=((banned, -100.0),))
            ),
        ],
    )
    assert [t for o in got["forced"][2] for t in o.token_ids] == [forced] * 6
    banned_ids = [t for o in got["banned"][2] for t in o.token_ids]
    assert banned not in banned_ids and banned_ids != free_ids
    with pytest.raises(RequestError, match="outside the vocabulary"):
        engine.prepare(GenerateRequest("bad", PROMPT, SamplingParams(logit_bias=((10**7, 1.0),))))
    with pytest.raises(ValueError, match="between -100 and 100"):
        SamplingParams(logit_bias=((1, 101.0),))


@pytest.mark.parametrize(
    "schema, feature",
    [
        ({"type": "object", "not": {"required": ["a"]}}, "'not'"),
        ({"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}, "'uniqueItems'"),
        ({"type": "object", "patternProperties": {"^x": {"type": "string"}}}, "'patternProperties'"),
        ({"type": "object", "allOf": [{"type": "object"}]}, "'allOf'"),
        ({"type": "object", "properties": {"a": {"type": "string", "format": "color"}}}, "'color'"),
        ({"type": "object", "properties": {"a": {"type": "integer", "multipleOf": 3}}}, "'multipleOf'"),
    ],
)
def test_unsupported_schema_features_are_refused_by_name(random_tiny_dense_engine_dir, schema, feature):
    engine = engine_for(random_tiny_dense_engine_dir)
    with pytest.raises(RequestError, match=feature):
        engine.prepare(schema_request(0, schema))


def test_abort_a_constrained_request_mid_way(random_tiny_dense_engine_dir):
    engine = engine_for(random_tiny_dense_engine_dir, overlap_scheduling=True)
    for i in (0, 1):
        engine.add_request(schema_request(i, SCHEMAS[i]))
    for _ in range(4):
        engine.step()
    assert engine.abort("s0").finish_reason == "abort"
    text, reason = "", None
    while engine.has_unfinished():
        for out in engine.step():
            assert out.request_id == "s1"
            text += out.text
            reason = out.finish_reason or reason
    assert reason == "stop"
    assert engine.stats().kv_blocks_free == engine.stats().kv_blocks_total


def test_mask_application_matches_xgrammars_own():
    """The applied mask (xgrammar's kernel, finite or not) agrees with our host unpacking (byte table,
    what the benchmark and the gate test read) on random bitmasks, for all rows and for a subset."""
    import torch

    from gemma_runtime.grammar.logits import TokenMask, apply_token_mask, unpack_bitmask

    gen = torch.Generator().manual_seed(0)
    vocab = 1000  # not a multiple of 32: the last word is partly padding
    logits = torch.randn(5, vocab, generator=gen)
    bits = torch.randint(-(2**31), 2**31 - 1, (5, -(-vocab // 32)), dtype=torch.int32, generator=gen)
    for rows in ([0, 1, 2, 3, 4], [4, 0, 2]):
        for finite in (False, True):
            masked = apply_token_mask(logits.clone(), TokenMask(rows, bits), finite=finite)
            lowest = torch.finfo(torch.float32).min if finite else float("-inf")
            expect = logits.clone()
            expect[rows] = expect[rows].masked_fill(~unpack_bitmask(bits[rows], vocab), lowest)
            assert torch.equal(masked, expect)
