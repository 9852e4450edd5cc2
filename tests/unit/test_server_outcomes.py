"""Exact outcomes at the HTTP layer, through the real `openai` SDK over the app with a scripted backend:
the finish reason of every way a reply ends (a complete tool call then truncation is "length", not
"tool_calls"), on both endpoints, streamed and not; and what each `reasoning_effort` value does to the
prompt the runtime receives. The same outcomes on the taught model and both backends:
tests/e2e/test_exact_outcomes.py."""

from __future__ import annotations

import json

import openai
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import ServerSettings

try:
    from ._server_fakes import FakeBackend, Script
except ImportError:
    from _server_fakes import FakeBackend, Script

MODEL = "google/gemma-4-tiny-it"
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
CALL_TEXT = '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>'
# The model's reply, one RequestOutput per piece: a whole call, then more text a max_tokens may cut.
CALL_THEN_MORE = [CALL_TEXT[:20], CALL_TEXT[20:], "Then", " more."]
CALL_PIECES = 2  # the call is complete after this many pieces


@pytest.fixture
def server():
    backend = FakeBackend(Script(list(CALL_THEN_MORE)))
    with TestClient(create_app(ServerSettings(), backend)) as client:
        yield (
            backend,
            client,
            openai.OpenAI(base_url="http://testserver/v1", api_key="k", http_client=client, max_retries=0),
        )


def streamed_finish(sdk, **body) -> tuple[list[str | None], list]:
    reasons, calls = [], []
    for chunk in sdk.chat.completions.create(model=MODEL, stream=True, **body):
        if chunk.choices:
            reasons.append(chunk.choices[0].finish_reason)
            calls += chunk.choices[0].delta.tool_calls or []
    return [r for r in reasons if r], calls


@pytest.mark.parametrize(
    "max_tokens,reason",
    [
        (CALL_PIECES, "length"),  # the call is complete, and the reply was cut right after it
        (CALL_PIECES + 1, "length"),  # cut in the text after the call
        (1, "length"),  # cut inside the call
        (None, "tool_calls"),  # the model ended on its own (the script's engine reason is "stop")
    ],
)
def test_chat_finish_reason_after_a_tool_call(server, max_tokens, reason):
    _, _, sdk = server
    limit = {"max_tokens": max_tokens} if max_tokens else {}
    choice = sdk.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, **limit).choices[0]
    assert choice.finish_reason == reason
    if max_tokens is None or max_tokens >= CALL_PIECES:
        (call,) = choice.message.tool_calls
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    reasons, calls = streamed_finish(sdk, messages=USER, tools=TOOLS, **limit)
    assert reasons == [reason]
    if max_tokens is None or max_tokens >= CALL_PIECES:
        assert calls[0].function.name == "get_weather"


def test_forced_named_call_cut_by_max_tokens_is_length(server):
    _, _, sdk = server
    named = {"type": "function", "function": {"name": "get_weather"}}
    out = sdk.chat.completions.create(
        model=MODEL, messages=USER, tools=TOOLS, tool_choice=named, max_tokens=CALL_PIECES
    )
    assert out.choices[0].finish_reason == "length"
    assert streamed_finish(sdk, messages=USER, tools=TOOLS, tool_choice=named, max_tokens=CALL_PIECES)[0] == ["length"]


@pytest.mark.parametrize("max_tokens,reason", [(CALL_PIECES, "length"), (len(CALL_THEN_MORE), "stop"), (None, "stop")])
def test_completions_finish_reason(server, max_tokens, reason):
    _, _, sdk = server
    limit = {"max_tokens": max_tokens} if max_tokens else {"max_tokens": 64}
    out = sdk.completions.create(model=MODEL, prompt="What is the weather in Paris?", **limit)
    assert out.choices[0].finish_reason == reason
    reasons = [
        c.choices[0].finish_reason
        for c in sdk.completions.create(model=MODEL, prompt="Hi", stream=True, **limit)
        if c.choices and c.choices[0].finish_reason
    ]
    assert reasons == [reason]


# -- reasoning_effort: every value but "none" turns thinking on (the template's only knob) -----------

THINKS = {"none": False, "minimal": True, "low": True, "medium": True, "high": True}


@pytest.mark.parametrize("effort,thinks", sorted(THINKS.items()))
def test_reasoning_effort_reaches_the_prompt(server, effort, thinks):
    backend, _, sdk = server
    sdk.chat.completions.create(model=MODEL, messages=USER, reasoning_effort=effort, max_tokens=1)
    prompt = backend.tokenizer.decode(backend.requests[-1].prompt)
    assert ("<|think|>" in prompt) is thinks
    # thinking off pre-fills an empty thought channel; on, the model opens its own
    assert prompt.endswith("<|channel>thought\n<channel|>") is not thinks


@pytest.mark.parametrize("effort", ["low", "none"])
def test_explicit_enable_thinking_wins_over_reasoning_effort(server, effort):
    backend, _, sdk = server
    wanted = effort == "none"  # the opposite of what the effort alone would give
    sdk.chat.completions.create(
        model=MODEL,
        messages=USER,
        reasoning_effort=effort,
        max_tokens=1,
        extra_body={"chat_template_kwargs": {"enable_thinking": wanted}},
    )
    assert ("<|think|>" in backend.tokenizer.decode(backend.requests[-1].prompt)) is wanted
