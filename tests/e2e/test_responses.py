"""/v1/responses live, on both backends (in process and Triton), with the real `openai` SDK (sync,
async, streaming) and the OpenAI Agents SDK: the taught model's replies come back exactly as Responses
output items (text, reasoning on and off, a function call and the answer to its output through
previous_response_id, an image), streamed events add up to the non-streaming response, and errors
are OpenAI envelopes."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from engine_builder.tiny.taught_corpus import (
    BLUE_SQUARE,
    IMAGE_QUESTION,
    MATH_QUESTION,
    PARIS_RESULT,
    RED_SQUARE,
    WEATHER_TOOL,
)
from tests.e2e.openai_helpers import HELLO_REPLY, MATH_ANSWER, MATH_REASONING, MODEL, async_client, data_url

GREEDY = {"temperature": 0}
WEATHER = {"type": "function", **WEATHER_TOOL["function"], "strict": False}  # the Responses tool shape
PARIS_ANSWER = "It is 21 degrees Celsius in Paris."


# Ids and times differ between two runs of the same response; `parsed*` are the SDK's own additions
# to what its stream helper returns. Everything else must be equal.
IGNORED = ("id", "call_id", "created_at", "completed_at", "parsed", "parsed_arguments")


def _without_ids(value):
    if isinstance(value, dict):
        return {k: _without_ids(v) for k, v in value.items() if k not in IGNORED}
    if isinstance(value, list):
        return [_without_ids(v) for v in value]
    return value


def test_text_stream_equals_plain_and_store(client):
    plain = client.responses.create(model=MODEL, input="Hello!", **GREEDY)
    assert plain.output_text == HELLO_REPLY and plain.status == "completed" and plain.model == MODEL
    assert [o.type for o in plain.output] == ["message"]
    usage = plain.usage
    assert (
        usage.total_tokens == usage.input_tokens + usage.output_tokens
        and usage.output_tokens_details.reasoning_tokens == 0
    )
    with client.responses.stream(model=MODEL, input="Hello!", **GREEDY) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == HELLO_REPLY and len(deltas) > 1
    assert _without_ids(final.to_dict()) == _without_ids(plain.to_dict())
    assert client.responses.retrieve(final.id).output_text == HELLO_REPLY
    client.responses.delete(final.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(final.id)


def test_reasoning_on_and_off(client):
    on = client.responses.create(model=MODEL, input=MATH_QUESTION, reasoning={"effort": "medium"}, **GREEDY)
    assert [o.type for o in on.output] == ["reasoning", "message"]
    assert on.output[0].content[0].text == MATH_REASONING and on.output_text == MATH_ANSWER
    assert on.usage.output_tokens_details.reasoning_tokens > len(MATH_REASONING.split()) // 2
    raw = list(
        client.responses.create(model=MODEL, input=MATH_QUESTION, reasoning={"effort": "medium"}, stream=True, **GREEDY)
    )
    assert "".join(e.delta for e in raw if e.type == "response.reasoning_text.delta") == MATH_REASONING
    assert [e.sequence_number for e in raw] == list(range(len(raw)))
    assert _without_ids(raw[-1].response.to_dict()) == _without_ids(on.to_dict())
    off = client.responses.create(model=MODEL, input=MATH_QUESTION, **GREEDY)
    assert [o.type for o in off.output] == ["message"] and off.output_text == MATH_ANSWER
    assert off.usage.output_tokens_details.reasoning_tokens == 0


async def test_function_call_then_its_output_via_previous_response_id(base):
    async with async_client(base) as aclient:
        first = await aclient.responses.create(
            model=MODEL, input="What is the weather in Paris?", tools=[WEATHER], **GREEDY
        )
        (call,) = first.output
        assert (
            call.type == "function_call"
            and call.name == "get_weather"
            and json.loads(call.arguments) == {"location": "Paris"}
        )
        stream = await aclient.responses.create(
            model=MODEL,
            previous_response_id=first.id,
            tools=[WEATHER],
            stream=True,
            **GREEDY,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": PARIS_RESULT}],
        )
        events = [e async for e in stream]
    final = events[-1].response
    assert events[-1].type == "response.completed" and final.output_text == PARIS_ANSWER
    assert final.previous_response_id == first.id


@pytest.mark.parametrize("spec, answer", [(RED_SQUARE, "A red square."), (BLUE_SQUARE, "A blue square.")])
def test_image_input(client, image_server, spec, answer):
    url = data_url(spec) if spec is RED_SQUARE else f"{image_server}/blue.png"
    content = [
        {"type": "input_text", "text": IMAGE_QUESTION},
        {"type": "input_image", "image_url": url, "detail": "auto"},
    ]
    out = client.responses.create(model=MODEL, input=[{"role": "user", "content": content}], **GREEDY)
    assert out.output_text == answer


def test_errors(client):
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model=MODEL, input="Hello!", background=True)
    assert bad.value.body["param"] == "background"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="Hello!", previous_response_id="resp_missing")
    assert (
        client.responses.create(model=MODEL, input="Hello!", **GREEDY).output_text == HELLO_REPLY
    )  # the server goes on


async def test_agents_sdk_runs_a_function_tool(base):
    from agents import Agent, FunctionTool, ModelSettings, OpenAIResponsesModel, RunConfig, Runner

    calls: list[dict] = []

    async def get_weather(_ctx, arguments: str) -> str:
        calls.append(json.loads(arguments))
        return PARIS_RESULT

    tool = FunctionTool(
        name="get_weather",
        description=WEATHER_TOOL["function"]["description"],
        params_json_schema=WEATHER_TOOL["function"]["parameters"],
        on_invoke_tool=get_weather,
        strict_json_schema=False,
    )
    async with async_client(base) as aclient:
        model = OpenAIResponsesModel(model=MODEL, openai_client=aclient)
        agent = Agent(name="weather", model=model, tools=[tool], model_settings=ModelSettings(temperature=0))
        result = await Runner.run(agent, "What is the weather in Paris?", run_config=RunConfig(tracing_disabled=True))
    assert calls == [{"location": "Paris"}]
    assert result.final_output == PARIS_ANSWER


def test_client_disconnect_aborts_the_request(base, live_server):
    from tests.e2e.test_openai_features import _wait_idle, _wait_stats

    body = {"model": MODEL, "input": "Hello!", "max_output_tokens": 6000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", base + "/responses", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(15):  # created, in_progress, the message item and its part, the first deltas
            next(lines)
        _wait_stats(live_server.backend, lambda s: s.num_running == 1, "the streaming response should be running")
    _wait_idle(live_server.backend)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(base + "/responses", json={**body, "stream": False}, timeout=httpx.Timeout(60, read=1.0))
    _wait_idle(live_server.backend)
