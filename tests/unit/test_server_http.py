"""The HTTP layer with a scripted backend: OpenAI streaming chunk rules, reasoning and tool-call
translation, sampling parameters, and the other endpoints (models, health, metrics, completions). Driven
by the real `openai` SDK where it can be. Error statuses and envelopes: test_server_http_errors.py."""

from __future__ import annotations

import json

import openai
import pytest

try:
    from ._server_fakes import Script
    from ._server_http_support import (
        CALL_TEXT,
        MODEL,
        THINK_TEXT,
        TOOLS,
        USER,
        assert_envelope,
        pieces,
        scripted_server,
        sse_events,
    )
except ImportError:
    from _server_fakes import Script
    from _server_http_support import (
        CALL_TEXT,
        MODEL,
        THINK_TEXT,
        TOOLS,
        USER,
        assert_envelope,
        pieces,
        scripted_server,
        sse_events,
    )


@pytest.fixture
def server(request):
    yield from scripted_server(request.param)


# -- streaming chunk rules (reference/openai_servers.md section (a)) --------------------------------


@pytest.mark.parametrize("server", [Script(pieces("Hello there, friend."))], indirect=True)
def test_stream_role_first_same_id_done_last(server):
    _, client, _ = server
    events = sse_events(client, {"model": MODEL, "messages": USER, "stream": True})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert sum("role" in c["choices"][0]["delta"] for c in chunks) == 1
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello there, friend."
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


@pytest.mark.parametrize("server", [Script(pieces(THINK_TEXT, 2))], indirect=True)
def test_reasoning_field_in_message_and_deltas(server):
    _, client, sdk = server
    thinking = {"chat_template_kwargs": {"enable_thinking": True}}
    body = {"model": MODEL, "messages": USER, **thinking}
    msg = sdk.chat.completions.create(model=MODEL, messages=USER, extra_body=thinking).choices[0].message
    assert msg.content == "It is sunny."
    assert msg.model_extra["reasoning"] == "The user asks. I answer."
    assert msg.model_extra["reasoning_content"] == "The user asks. I answer."
    events = sse_events(client, {**body, "stream": True})[:-1]
    deltas = [c["choices"][0]["delta"] for c in events]
    assert "".join(d.get("reasoning", "") for d in deltas) == "The user asks. I answer."
    assert "".join(d.get("content", "") for d in deltas) == "It is sunny."
    # include_reasoning=false: the model still reasons, the answer does not carry it
    msg = (
        sdk.chat.completions.create(model=MODEL, messages=USER, extra_body={**thinking, "include_reasoning": False})
        .choices[0]
        .message
    )
    assert msg.content == "It is sunny." and "reasoning" not in msg.model_extra
    events = sse_events(client, {**body, "stream": True, "include_reasoning": False})[:-1]
    assert not any("reasoning" in c["choices"][0]["delta"] for c in events)


@pytest.mark.parametrize("server", [Script(pieces("I will check." + CALL_TEXT, 4))], indirect=True)
def test_streamed_tool_call_shape_and_sdk_accumulation(server):
    _, client, sdk = server
    body = {"model": MODEL, "messages": USER, "tools": TOOLS}
    events = sse_events(client, {**body, "stream": True})[:-1]
    call_deltas = [tc for c in events for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert call_deltas[0]["index"] == 0 and call_deltas[0]["type"] == "function"
    assert call_deltas[0]["id"].startswith("call_") and call_deltas[0]["function"]["name"] == "get_weather"
    assert sum("id" in d for d in call_deltas) == 1  # id/name once, never repeated
    # the header chunk first (empty arguments, as OpenAI streams it), then argument fragments only
    assert call_deltas[0]["function"]["arguments"] == "" and all(
        set(d) == {"index", "function"} for d in call_deltas[1:]
    )
    assert all(set(d["function"]) == {"arguments"} for d in call_deltas[1:]) and len(call_deltas) >= 2
    assert json.loads("".join(d["function"]["arguments"] for d in call_deltas)) == {"city": "Paris"}
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # the SDK's own stream accumulator (it concatenates repeated id/name/role fields)
    with sdk.chat.completions.stream(**body) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "I will check."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    # non-streaming agrees
    msg = sdk.chat.completions.create(**body).choices[0].message
    assert msg.content == "I will check." and msg.tool_calls[0].function.name == "get_weather"


TWO_CALLS = CALL_TEXT + "<|tool_call>call:get_time{}<tool_call|>"


@pytest.mark.parametrize("server", [Script(pieces(TWO_CALLS, 5))], indirect=True)
def test_parallel_tool_calls(server):
    _, client, sdk = server
    body = {"model": MODEL, "messages": USER, "tools": TOOLS}
    calls = sdk.chat.completions.create(**body).choices[0].message.tool_calls
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        ("get_weather", '{"city": "Paris"}'),
        ("get_time", "{}"),
    ]
    assert len({c.id for c in calls}) == 2
    events = sse_events(client, {**body, "stream": True})[:-1]
    deltas = [d for c in events for d in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [d["index"] for d in deltas if "id" in d] == [0, 1]  # each call's header once, in order
    assert [d["index"] for d in deltas] == [0, 0, 1, 1]  # header, then that call's arguments
    only = sdk.chat.completions.create(**body, parallel_tool_calls=False).choices[0]
    assert [c.function.name for c in only.message.tool_calls] == ["get_weather"] and only.finish_reason == "tool_calls"


@pytest.mark.parametrize("server", [Script(pieces('city:<|"|>Paris<|"|>}<tool_call|>', 3))], indirect=True)
def test_named_tool_choice_prefills_the_call(server):
    backend, _, sdk = server
    choice = {"type": "function", "function": {"name": "get_weather"}}
    out = sdk.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, tool_choice=choice).choices[0]
    prompt = backend.tokenizer.decode(backend.requests[-1].prompt)
    assert prompt.endswith("<|tool_call>call:get_weather{")
    assert out.message.tool_calls[0].function.name == "get_weather"
    assert json.loads(out.message.tool_calls[0].function.arguments) == {"city": "Paris"}
    assert out.finish_reason == "stop"  # OpenAI's answer for a forced named function


@pytest.mark.parametrize("server", [Script(pieces('get_weather{city:<|"|>Paris<|"|>}<tool_call|>', 3))], indirect=True)
def test_required_tool_choice_prefills_call_start(server):
    backend, client, sdk = server
    out = sdk.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, tool_choice="required").choices[0]
    assert backend.tokenizer.decode(backend.requests[-1].prompt).endswith("<|tool_call>call:")
    assert out.finish_reason == "tool_calls" and out.message.tool_calls[0].function.name == "get_weather"
    events = sse_events(
        client, {"model": MODEL, "messages": USER, "tools": TOOLS, "tool_choice": "required", "stream": True}
    )[:-1]
    deltas = [d for c in events for d in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [d["function"]["name"] for d in deltas if "name" in d["function"]] == ["get_weather"]
    assert json.loads("".join(d["function"]["arguments"] for d in deltas)) == {"city": "Paris"}


@pytest.mark.parametrize("server", [Script(pieces(CALL_TEXT, 4))], indirect=True)
def test_tool_choice_none_returns_text(server):
    backend, _, sdk = server
    out = sdk.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, tool_choice="none").choices[0]
    assert out.message.tool_calls is None and out.finish_reason == "stop"
    assert "<|tool>" not in backend.tokenizer.decode(backend.requests[-1].prompt)


@pytest.mark.parametrize("server", [Script(pieces("abcdefgh", 1))], indirect=True)
def test_usage_chunk_n_and_logprobs(server):
    _, client, sdk = server
    body = {
        "model": MODEL,
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
        "n": 2,
        "logprobs": True,
        "top_logprobs": 2,
    }
    events = sse_events(client, body)
    assert events[-1] == "[DONE]"
    usage = events[-2]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 16
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 16
    for index in (0, 1):
        mine = [c["choices"][0] for c in events[:-2] if c["choices"][0]["index"] == index]
        assert mine[0]["delta"]["role"] == "assistant" and sum("role" in c["delta"] for c in mine) == 1
        assert [c["finish_reason"] for c in mine if c["finish_reason"]] == ["stop"]
        assert "".join(c["delta"].get("content", "") for c in mine) == "abcdefgh"
        lps = [lp for c in mine if c["logprobs"] for lp in c["logprobs"]["content"]]
        assert len(lps) == 8 and all(len(lp["top_logprobs"]) == 2 for lp in lps)
    out = sdk.chat.completions.create(
        model=MODEL, messages=USER, n=2, logprobs=True, top_logprobs=1, max_completion_tokens=3
    )
    assert [c.index for c in out.choices] == [0, 1] and out.usage.completion_tokens == 6
    assert all(c.finish_reason == "length" and c.message.content == "abc" for c in out.choices)
    assert (
        len(out.choices[0].logprobs.content) == 3 and out.choices[0].logprobs.content[0].top_logprobs[0].logprob == -0.5
    )


@pytest.mark.parametrize("server", [Script(pieces("Hello world", 2), error_after=2)], indirect=True)
def test_error_after_stream_began_is_an_event_then_done(server):
    _, client, sdk = server
    events = sse_events(client, {"model": MODEL, "messages": USER, "stream": True})
    assert events[-1] == "[DONE]"
    err = events[-2]["error"]
    assert set(err) == {"message", "type", "param", "code"} and "injected" in err["message"]
    with pytest.raises(openai.APIError):
        for _ in sdk.chat.completions.create(model=MODEL, messages=USER, stream=True):
            pass


@pytest.mark.parametrize("server", [Script(pieces("ok"))], indirect=True)
def test_sampling_params_reach_the_runtime(server):
    backend, _, sdk = server
    sdk.chat.completions.create(
        model=MODEL,
        messages=USER,
        temperature=0.3,
        top_p=0.5,
        seed=7,
        stop=["END", "STOP"],
        max_tokens=9,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        extra_body={"top_k": 5, "min_p": 0.1},
    )
    s = backend.requests[-1].sampling
    assert (s.temperature, s.top_p, s.top_k, s.min_p, s.seed, s.stop, s.max_tokens) == (
        0.3,
        0.5,
        5,
        0.1,
        7,
        ("END", "STOP"),
        9,
    )
    assert (s.presence_penalty, s.frequency_penalty, s.logprobs) == (0.5, -0.5, None)
    sdk.chat.completions.create(model=MODEL, messages=USER, max_completion_tokens=4, max_tokens=100)
    s = backend.requests[-1].sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k) == (4, 1.0, 0.95, 64)  # generation_config defaults
    sdk.chat.completions.create(model=MODEL, messages=USER)
    prompt_len = len(backend.requests[-1].prompt)
    assert backend.requests[-1].sampling.max_tokens == 256 - prompt_len  # whatever room the context leaves


# -- other endpoints --------------------------------------------------------------------------------


@pytest.mark.parametrize("server", [(Script(pieces(" and more", 2)), {"served_model_name": "my-gemma"})], indirect=True)
def test_models_health_metrics_completions(server):
    backend, client, sdk = server
    assert [m.id for m in sdk.models.list().data] == ["my-gemma"]
    assert client.get("/v1/health/live").status_code == 200
    assert client.get("/v1/health/ready").status_code == 200 and client.get("/health").status_code == 200
    out = sdk.completions.create(model="my-gemma", prompt="Once", max_tokens=20, logprobs=1, echo=True)
    assert out.choices[0].text == "Once and more" and out.object == "text_completion"
    assert out.choices[0].logprobs.text_offset[0] == len("Once")
    out = sdk.completions.create(model="my-gemma", prompt=[[5, 6], [7]], max_tokens=20, n=2)
    assert [c.index for c in out.choices] == [0, 1, 2, 3] and out.usage.prompt_tokens == 3
    assert backend.requests[-1].prompt == [7]
    text = "".join(
        c.choices[0].text for c in sdk.completions.create(model="my-gemma", prompt="Once", max_tokens=20, stream=True)
    )
    assert text == " and more"
    metrics = client.get("/metrics").text
    for name in (
        "gemma_requests_total",
        "gemma_time_to_first_token_seconds_bucket",
        "gemma_inter_token_latency_seconds_bucket",
        "gemma_e2e_request_latency_seconds_bucket",
        "gemma_num_requests_running",
        "gemma_num_requests_waiting",
        "gemma_kv_cache_usage_perc",
    ):
        assert name in metrics, name
    assert 'endpoint="/v1/completions",model_name="my-gemma",status="200"' in metrics
    backend.healthy = False
    assert_envelope(client.get("/v1/health/ready"), 503)
