"""Gemma 4 tool calls held to a grammar, on the untrained tiny engine: after the server's prefill the
output is a call (or calls) to a declared tool whose arguments validate; the thought-channel gate
leaves reasoning free; tool schemas the grammar cannot enforce are refused by name."""

from __future__ import annotations

import json

import jsonschema
import pytest
import xgrammar as xgr

from gemma_runtime.api import GenerateRequest, RequestError, SamplingParams
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine
from gemma_runtime.grammar.spec import StructuredOutput
from server.parsers import parse_output

PROMPT = "<bos><|turn>user\nDo it.<turn|>\n<|turn>model\n"
TOOLS = [
    {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "required": ["location"],
            "properties": {
                "location": {"type": "string", "maxLength": 10},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
        },
    },
    {
        "name": "book_room",
        "parameters": {
            "type": "object",
            "additionalProperties": False,
            "required": ["room", "nights"],
            "properties": {
                "room": {"enum": ["single", "double"]},
                "nights": {"type": "integer", "minimum": 1, "maximum": 14},
                "guests": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2},
                "vip": {"type": "boolean"},
                "note": {"anyOf": [{"type": "null"}, {"const": "late"}]},
            },
        },
    },
    {"name": "ping", "parameters": {"type": "object", "properties": {}}},
]
SCHEMAS = {t["name"]: t["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def engine(random_tiny_dense_engine_dir) -> LLMEngine:
    return LLMEngine(
        random_tiny_dense_engine_dir, RuntimeConfig(block_size=4, max_model_len=512, overlap_scheduling=True)
    )


def tools_request(
    rid: str, prefill: str, choice: str, name: str | None = None, parallel: bool = True, seed: int | None = None
):
    source = {"tools": TOOLS, "choice": choice, "name": name, "parallel": parallel}
    sampling = SamplingParams(
        max_tokens=200,
        structured=StructuredOutput("tool_calls", json.dumps(source)),
        **(dict(temperature=1.0, seed=seed) if seed is not None else {}),
    )
    return GenerateRequest(rid, PROMPT + prefill, sampling)


def run(engine: LLMEngine, requests) -> dict[str, tuple[str, str]]:
    got = {r.request_id: ["", None] for r in requests}
    for r in requests:
        engine.add_request(r)
    while engine.has_unfinished():
        for out in engine.step():
            got[out.request_id][0] += out.text
            got[out.request_id][1] = out.finish_reason or got[out.request_id][1]
    return {k: tuple(v) for k, v in got.items()}


def test_required_and_named_calls_validate(engine):
    required = "<|tool_call>call:"
    requests = [tools_request(f"req{i}", required, "required", seed=i if i else None) for i in range(6)]
    requests += [tools_request(f"named-{t['name']}", f"{required}{t['name']}{{", "named", t["name"]) for t in TOOLS]
    requests += [tools_request("single", required, "required", parallel=False, seed=7)]
    got = run(engine, requests)
    for rid, (text, reason) in got.items():
        prefill = next(r for r in requests if r.request_id == rid).prompt.split("<|turn>model\n", 1)[1]
        msg = parse_output(prefill + text)
        assert reason == "stop" and msg.tool_calls, (rid, text)
        for call in msg.tool_calls:
            jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
        if rid.startswith("named-"):
            assert [c.name for c in msg.tool_calls] == [rid[len("named-") :]]
        if rid == "single":
            assert len(msg.tool_calls) == 1


@pytest.mark.parametrize(
    "schema, feature",
    [
        ({"type": "object", "properties": {"x": {"type": "string", "pattern": "a+"}}}, "'pattern'"),
        ({"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 10**6}}}, "integer range"),
        ({"type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}}, "'\\$ref'"),
        ({"type": "array"}, "must be an object"),
    ],
)
def test_unenforceable_tool_schemas_are_refused_by_name(engine, schema, feature):
    source = {"tools": [{"name": "f", "parameters": schema}], "choice": "required", "parallel": True}
    request = GenerateRequest(
        "bad", PROMPT, SamplingParams(structured=StructuredOutput("tool_calls", json.dumps(source)))
    )
    with pytest.raises(RequestError, match=feature):
        engine.prepare(request)


def test_the_thought_gate_keeps_reasoning_free(engine):
    """thought="optional": the first token may open the channel; inside it nothing is masked; after
    `<channel|>` the grammar holds. The real xgrammar matcher, fed tokens by hand."""
    tok = engine.tokenizer
    schema = {"type": "object", "properties": {"a": {"enum": ["x"]}}, "required": ["a"], "additionalProperties": False}
    spec = StructuredOutput("json_schema", json.dumps(schema), thought="optional")
    compiled = engine.structured.prepare(GenerateRequest("g", PROMPT, SamplingParams(structured=spec)))
    state = engine.structured.compiler.new_state(spec, compiled)
    vocab = engine.spec.text.vocab_size
    open_id, close_id = tok.convert_tokens_to_ids("<|channel>"), tok.convert_tokens_to_ids("<channel|>")

    def allowed() -> set[int]:
        bits = xgr.allocate_token_bitmask(1, vocab)
        state.fill(bits, 0)
        return {t for t in range(vocab) if (int(bits[0, t // 32]) >> (t % 32)) & 1}

    first = allowed()
    assert open_id in first and tok.convert_tokens_to_ids("{") in first and len(first) < 10
    state.accept(open_id)
    assert not state.constrains_next  # reasoning: free text
    for t in tok.encode("thought\nno JSON here }{", add_special_tokens=False):
        state.accept(t)
    assert not state.constrains_next
    state.accept(close_id)
    assert state.constrains_next and open_id not in allowed() and tok.convert_tokens_to_ids("{") in allowed()
    for t in tok.encode('{"a": "x"}', add_special_tokens=False):
        state.accept(t)
    assert not state.rejected and allowed() <= set(engine.stop_token_ids)


def test_auto_with_a_strict_tool_holds_every_opened_call(engine):
    """tool_choice "auto": free text stays free, but once `<|tool_call>` is open the call names a declared
    tool and a strict tool's arguments validate. The untrained model is pushed to open calls by bias."""
    tools = [dict(TOOLS[1], strict=True), TOOLS[2]]
    source = {"tools": tools, "choice": "auto", "parallel": True}
    call_open = engine.tokenizer.convert_tokens_to_ids("<|tool_call>")
    requests = [
        GenerateRequest(
            f"auto{i}",
            PROMPT,
            SamplingParams(
                max_tokens=120,
                temperature=1.0,
                seed=i,
                logit_bias=((call_open, 8.0),),
                structured=StructuredOutput("tool_calls", json.dumps(source)),
            ),
        )
        for i in range(4)
    ]
    got = run(engine, requests)
    seen = 0
    for text, _ in got.values():
        msg = parse_output(text)
        for call in msg.tool_calls:
            seen += 1
            assert call.name in ("book_room", "ping")
            if call.name == "book_room":
                jsonschema.validate(json.loads(call.arguments), SCHEMAS["book_room"])
        # an opened call never stays malformed: whatever follows <|tool_call> parsed as a call
        assert text.count("<|tool_call>") <= len(msg.tool_calls) + (
            0 if "<tool_call|>" in text.rsplit("<|tool_call>", 1)[-1] else 1
        )
    assert seen, "the bias opened no call: the test checks nothing"
