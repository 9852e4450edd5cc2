"""Exact finish reasons and `reasoning_effort` on the taught model, both endpoints, streamed and not,
against both backends (in process and Triton): a complete tool call cut by max_tokens right after it is
"length"; each effort value turns thinking on or off as the taught replies show."""

from __future__ import annotations

import json

import pytest

from engine_builder.tiny.taught_corpus import MATH_QUESTION, WEATHER_TOOL
from tests.e2e.openai_helpers import GREEDY, HELLO, HELLO_REPLY, MATH_ANSWER, MATH_REASONING, MODEL, WEATHER_Q


def chat(client, stream: bool, **body):
    """(finish_reason, tool calls as (name, arguments), content) of one greedy choice."""
    if not stream:
        choice = client.chat.completions.create(model=MODEL, **GREEDY, **body).choices[0]
        calls = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls or ()]
        return choice.finish_reason, calls, choice.message.content
    reasons, names, args, content = [], {}, {}, ""
    for chunk in client.chat.completions.create(model=MODEL, stream=True, **GREEDY, **body):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for c in delta.tool_calls or ():
            names[c.index] = names.get(c.index) or (c.function.name if c.function else None)
            args[c.index] = args.get(c.index, "") + ((c.function.arguments or "") if c.function else "")
        if chunk.choices[0].finish_reason:
            reasons.append(chunk.choices[0].finish_reason)
    assert len(reasons) == 1, reasons
    return reasons[0], [(names[i], json.loads(args[i])) for i in sorted(names)], content or None


@pytest.fixture(scope="module")
def call_tokens(client) -> int:
    """Tokens of the taught weather call, its closing <tool_call|> included (the stop token after it not)."""
    out = client.chat.completions.create(model=MODEL, messages=WEATHER_Q, tools=[WEATHER_TOOL], **GREEDY)
    assert out.choices[0].finish_reason == "tool_calls"
    return out.usage.completion_tokens - 1


@pytest.mark.parametrize("stream", [False, True], ids=["sync", "stream"])
def test_complete_tool_call_then_truncation_is_length(client, call_tokens, stream):
    whole = [("get_weather", {"location": "Paris"})]
    assert chat(client, stream, messages=WEATHER_Q, tools=[WEATHER_TOOL])[:2] == ("tool_calls", whole)
    reason, calls, _ = chat(client, stream, messages=WEATHER_Q, tools=[WEATHER_TOOL], max_tokens=call_tokens)
    assert (reason, calls) == ("length", whole)  # the call is whole, but the reply was cut
    reason, _, _ = chat(client, stream, messages=WEATHER_Q, tools=[WEATHER_TOOL], max_tokens=call_tokens - 2)
    assert reason == "length"  # cut inside the call


@pytest.mark.parametrize("stream", [False, True], ids=["sync", "stream"])
def test_completions_finish_reasons(client, live_server, stream):
    tok = live_server.backend.tokenizer
    prompt = tok.apply_chat_template(HELLO, tokenize=False, add_generation_prompt=True)
    whole = client.completions.create(model=MODEL, prompt=prompt, max_tokens=64, temperature=0)
    assert whole.choices[0].text == HELLO_REPLY
    reply_tokens = whole.usage.completion_tokens - 1  # the end-of-turn token that stopped it is counted

    def finish(max_tokens: int) -> str:
        body = dict(model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0)
        if not stream:
            return client.completions.create(**body).choices[0].finish_reason
        reasons = [
            c.choices[0].finish_reason
            for c in client.completions.create(stream=True, **body)
            if c.choices[0].finish_reason
        ]
        assert len(reasons) == 1
        return reasons[0]

    assert finish(64) == "stop"
    assert finish(reply_tokens + 1) == "stop"  # the end-of-turn token fits: the model stopped
    assert finish(reply_tokens) == "length"  # the whole reply, but not the end of turn
    assert finish(2) == "length"


@pytest.mark.parametrize("stream", [False, True], ids=["sync", "stream"])
@pytest.mark.parametrize("effort", ["none", "minimal", "low", "medium", "high"])
def test_each_reasoning_effort(client, effort, stream):
    body = dict(messages=[{"role": "user", "content": MATH_QUESTION}], reasoning_effort=effort)
    if not stream:
        msg = client.chat.completions.create(model=MODEL, **GREEDY, **body).choices[0].message
        reasoning = (msg.model_extra or {}).get("reasoning")
        content = msg.content
    else:
        deltas = [
            c.choices[0].delta
            for c in client.chat.completions.create(model=MODEL, stream=True, **GREEDY, **body)
            if c.choices
        ]
        reasoning = "".join((d.model_extra or {}).get("reasoning") or "" for d in deltas) or None
        content = "".join(d.content or "" for d in deltas)
    assert content == MATH_ANSWER
    assert reasoning == (None if effort == "none" else MATH_REASONING)
