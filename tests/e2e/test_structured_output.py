"""Structured output and guaranteed tool calls, live through the openai SDK, on an untrained tiny engine
(its free text is noise, so whatever validates here is the grammar's doing): 32 generated bounded schemas,
streaming and not, all parse, validate with `jsonschema` and finish with `stop`; required and named
`tool_choice` give calls whose arguments validate; unsupported schema features are a 400 naming them;
`logit_bias` moves tokens on chat and text completions. (The thought-channel gate is checked in
tests/unit/test_tool_call_grammar.py; the Triton tensors in tests/unit/test_triton_structured.py (triton_bridge/structured.py).)
"""

from __future__ import annotations

import asyncio
import json

import httpx
import jsonschema
import openai
import pytest

from bench.uvicorn_thread import UvicornThread
from tests.e2e.openai_helpers import GREEDY, post
from tests.unit.structured_schemas import generated_schemas

MODEL = "tiny-untrained"
WEATHER_Q = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "required": ["location"],
            "properties": {
                "location": {"type": "string", "maxLength": 20},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
        },
    },
}

SCHEMAS = generated_schemas()
ASK = [{"role": "user", "content": "Describe a thing as JSON."}]
BOOKING_TOOL = {
    "type": "function",
    "function": {
        "name": "book_room",
        "strict": True,
        "parameters": {
            "type": "object",
            "additionalProperties": False,
            "required": ["room", "nights", "guests"],
            "properties": {
                "room": {"type": "string", "enum": ["single", "double", "suite"]},
                "nights": {"type": "integer", "minimum": 1, "maximum": 14},
                "guests": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 3},
                "breakfast": {"type": "boolean"},
            },
        },
    },
}
TOOL_SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER_TOOL, BOOKING_TOOL)}


def _triton_backend(engine_dir, tmp_path_factory):
    import importlib.util
    import shutil

    from tests.e2e.conftest import RUNTIME, free_ports
    from triton_bridge.client import TritonBackend
    from triton_bridge.launcher import TritonPorts, start_triton

    if not (shutil.which("tritonserver") or importlib.util.find_spec("pytriton")):
        pytest.skip("no tritonserver on PATH and nvidia-pytriton is not installed")
    log = tmp_path_factory.mktemp("triton-untrained") / "tritonserver.log"
    triton = start_triton(
        engine_dir,
        TritonPorts(*free_ports(3)),
        runtime_config=RUNTIME,
        log_path=log,
        timeout=300,
        record_engine_path=False,
    )
    return triton, TritonBackend.from_uri(triton.backend_uri, engine_dir=engine_dir)


@pytest.fixture(scope="module", params=["embedded", "triton"])
def base(request, random_tiny_dense_engine_dir, tmp_path_factory):
    """The OpenAI server on the untrained engine, in process and in front of a real tritonserver."""
    from gemma_runtime.config import RuntimeConfig
    from server.app import create_app
    from server.backend import EmbeddedBackend
    from server.settings import ServerSettings

    triton = None
    if request.param == "triton":
        triton, backend = _triton_backend(random_tiny_dense_engine_dir, tmp_path_factory)
    else:
        backend = EmbeddedBackend.from_engine_dir(
            random_tiny_dense_engine_dir, RuntimeConfig(max_num_seqs=32, device="cpu")
        )
    request.addfinalizer(lambda: triton.stop() if triton is not None else None)
    app = create_app(ServerSettings(engine_dir=str(random_tiny_dense_engine_dir), served_model_name=MODEL), backend)
    with UvicornThread(app) as server:
        server.backend = backend
        yield server.base_url + "/v1"


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=base, api_key="not-used", max_retries=0, timeout=300)


def async_client(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base, api_key="not-used", max_retries=0, timeout=300)


def schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}}


async def _one(aclient, schema: dict, stream: bool) -> tuple[str, str]:
    kwargs = dict(model=MODEL, messages=ASK, response_format=schema_format(schema), max_tokens=300, **GREEDY)
    if not stream:
        choice = (await aclient.chat.completions.create(**kwargs)).choices[0]
        return choice.message.content, choice.finish_reason
    text, reason = "", None
    async for chunk in await aclient.chat.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            text += c.delta.content or ""
            reason = c.finish_reason or reason
    return text, reason


async def test_generated_schemas_validate_streaming_and_not(base):
    aclient = async_client(base)
    jobs = [(s, stream) for s in SCHEMAS for stream in (False, True)]
    results = await asyncio.gather(*(_one(aclient, s, stream) for s, stream in jobs))
    for (schema, stream), (text, reason) in zip(jobs, results):
        assert reason == "stop", (stream, text)
        jsonschema.validate(json.loads(text), schema)


def test_text_completions_and_json_object(client):
    schema = SCHEMAS[0]
    out = client.completions.create(
        model=MODEL, prompt="A thing:", max_tokens=300, extra_body={"response_format": schema_format(schema)}, **GREEDY
    )
    assert out.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(out.choices[0].text), schema)
    chat = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=6, response_format={"type": "json_object"}, **GREEDY
    )
    assert chat.choices[0].message.content.startswith("{")


@pytest.mark.parametrize("stream", [False, True])
async def test_required_and_named_tool_choice_give_valid_calls(base, stream):
    aclient = async_client(base)
    tools = [WEATHER_TOOL, BOOKING_TOOL]
    asks = [
        ("required", [{"role": "user", "content": "Book something."}]),
        ("required", WEATHER_Q),
        ({"type": "function", "function": {"name": "book_room"}}, WEATHER_Q),
        ({"type": "function", "function": {"name": "get_weather"}}, [{"role": "user", "content": "Hi"}]),
    ]
    for choice, messages in asks:
        calls = await _calls(aclient, messages, tools, choice, stream)
        assert calls, (choice, messages)
        for name, arguments in calls:
            jsonschema.validate(json.loads(arguments), TOOL_SCHEMAS[name])
        if isinstance(choice, dict):
            assert {n for n, _ in calls} == {choice["function"]["name"]}


async def _calls(aclient, messages, tools, choice, stream) -> list[tuple[str, str]]:
    kwargs = dict(model=MODEL, messages=messages, tools=tools, tool_choice=choice, max_tokens=200, **GREEDY)
    if not stream:
        msg = (await aclient.chat.completions.create(**kwargs)).choices[0].message
        return [(c.function.name, c.function.arguments) for c in msg.tool_calls or ()]
    calls: dict[int, list[str]] = {}
    async for chunk in await aclient.chat.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            for d in c.delta.tool_calls or ():
                entry = calls.setdefault(d.index, ["", ""])
                entry[0] += d.function.name or ""
                entry[1] += d.function.arguments or ""
    return [tuple(v) for _, v in sorted(calls.items())]


def test_unsupported_schema_features_are_400_naming_them(base):
    bad = {"type": "object", "properties": {"a": {"type": "string"}}, "patternProperties": {"^x": {}}}
    r = post(base, {"model": MODEL, "messages": ASK, "response_format": schema_format(bad)})
    assert r.status_code == 400 and "patternProperties" in r.json()["error"]["message"], r.text
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {"type": "object", "properties": {"x": {"type": "string", "pattern": "a+"}}},
        },
    }
    r = post(base, {"model": MODEL, "messages": ASK, "tools": [tool], "tool_choice": "required"})
    assert r.status_code == 400 and "pattern" in r.json()["error"]["message"], r.text
    r = post(base, {"model": MODEL, "messages": ASK, "logit_bias": {"5": 300}})
    assert r.status_code == 400 and "logit_bias" in r.text
    r = httpx.post(
        base + "/completions", json={"model": MODEL, "prompt": "x", "response_format": {"type": "yaml"}}, timeout=60
    )
    assert r.status_code == 400


def test_logit_bias_on_chat_and_completions(client, random_tiny_dense_engine_dir):
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(random_tiny_dense_engine_dir))
    token = tokenizer.encode(" the", add_special_tokens=False)[0]
    free = client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=4, extra_body={"ignore_eos": True}, **GREEDY
    )
    out = client.completions.create(
        model=MODEL,
        prompt="Hello",
        max_tokens=4,
        logit_bias={str(token): 100},
        extra_body={"ignore_eos": True},
        **GREEDY,
    )
    assert out.choices[0].text == tokenizer.decode([token] * 4) != free.choices[0].text
    chat = client.chat.completions.create(
        model=MODEL,
        messages=WEATHER_Q,
        max_tokens=3,
        logit_bias={str(token): 100},
        extra_body={"ignore_eos": True},
        **GREEDY,
    )
    assert chat.choices[0].message.content == tokenizer.decode([token] * 3)


@pytest.mark.parametrize("stream", [False, True])
def test_responses_text_format_json_schema(client, stream):
    """/v1/responses' `text.format` (the flat json_schema form) is held to the schema by the same grammar."""
    schema = SCHEMAS[1]
    fmt = {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}
    kwargs = dict(
        model=MODEL, input="Describe a thing as JSON.", text={"format": fmt}, max_output_tokens=300, temperature=0
    )
    if stream:
        with client.responses.stream(**kwargs) as events:
            resp = events.get_final_response()
    else:
        resp = client.responses.create(**kwargs)
    assert resp.status == "completed" and resp.text.format.type == "json_schema"
    jsonschema.validate(json.loads(resp.output_text), schema)
