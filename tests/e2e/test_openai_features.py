"""The OpenAI server's features and errors, live, with real clients (openai sync and async, langchain):
each feature with greedy decoding, where the taught model gives its corpus replies exactly; each error
with its status and OpenAI envelope; client disconnects abort the runtime request. Every test runs
against both backends (in process and Triton)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from engine_builder.tiny.taught_corpus import BLUE_SQUARE, MATH_QUESTION, RED_SQUARE, WEATHER_TOOL
from tests.e2e.conftest import API_KEY, MAX_IMAGES
from tests.e2e.openai_helpers import (
    GREEDY,
    HELLO,
    HELLO_REPLY,
    MATH_ANSWER,
    MATH_REASONING,
    MODEL,
    THINKING,
    WEATHER_Q,
    assert_envelope,
    async_client,
    data_url,
    image_messages,
    post,
)
from tests.e2e.stream_support import error_after_text
from tests.fault_injection import FAULT, fail_on_step

# == 2. features, greedy: the taught replies come back exactly ====================================


def test_plain_answer_sync_and_stream(client):
    out = client.chat.completions.create(model=MODEL, messages=HELLO, **GREEDY)
    assert out.choices[0].message.content == HELLO_REPLY and out.choices[0].finish_reason == "stop"
    assert out.choices[0].message.tool_calls is None
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}, **GREEDY
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == HELLO_REPLY
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == out.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_reasoning_on_off_and_hidden(client):
    msg = (
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": MATH_QUESTION}], extra_body=THINKING, **GREEDY
        )
        .choices[0]
        .message
    )
    assert msg.content == MATH_ANSWER
    assert msg.model_extra["reasoning"] == MATH_REASONING and msg.model_extra["reasoning_content"] == MATH_REASONING
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": MATH_QUESTION}],
            stream=True,
            extra_body=THINKING,
            **GREEDY,
        )
    )
    deltas = [c.choices[0].delta for c in chunks]
    assert "".join((d.model_extra or {}).get("reasoning") or "" for d in deltas) == MATH_REASONING
    assert "".join(d.content or "" for d in deltas) == MATH_ANSWER
    hidden = (
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": MATH_QUESTION}],
            extra_body={**THINKING, "include_reasoning": False},
            **GREEDY,
        )
        .choices[0]
        .message
    )
    assert hidden.content == MATH_ANSWER and "reasoning" not in hidden.model_extra
    off = (
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": MATH_QUESTION}],
            extra_body={"chat_template_kwargs": {"enable_thinking": False}},
            **GREEDY,
        )
        .choices[0]
        .message
    )
    assert off.content == MATH_ANSWER and off.model_extra.get("reasoning") is None


def test_tool_call_and_answer_after_tool_result(client):
    out = client.chat.completions.create(model=MODEL, messages=WEATHER_Q, tools=[WEATHER_TOOL], **GREEDY).choices[0]
    assert out.finish_reason == "tool_calls"
    (call,) = out.message.tool_calls
    assert (
        call.type == "function"
        and call.function.name == "get_weather"
        and json.loads(call.function.arguments) == {"location": "Paris"}
    )
    history = WEATHER_Q + [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "unit": "celsius"}'},
    ]
    answer = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER_TOOL], **GREEDY).choices[0]
    assert answer.message.content == "It is 21 degrees Celsius in Paris." and answer.finish_reason == "stop"


async def test_async_streaming_parallel_tool_calls(base):
    async with async_client(base) as aclient:
        await _parallel_tool_calls(aclient)


async def _parallel_tool_calls(aclient):
    messages = [{"role": "user", "content": "What is the weather in Paris and in London?"}]
    stream = await aclient.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER_TOOL], stream=True, **GREEDY
    )
    calls: dict[int, dict] = {}
    finish = None
    async for chunk in stream:
        choice = chunk.choices[0]
        for d in choice.delta.tool_calls or ():
            call = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
            if d.id is not None:
                assert call["id"] is None, "id repeated"
                call["id"], call["name"] = d.id, d.function.name
            call["arguments"] += d.function.arguments or ""
        finish = choice.finish_reason or finish
    assert finish == "tool_calls" and sorted(calls) == [0, 1]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        ("get_weather", {"location": "Paris"}),
        ("get_weather", {"location": "London"}),
    ]
    single = await aclient.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER_TOOL], parallel_tool_calls=False, **GREEDY
    )
    assert [json.loads(c.function.arguments)["location"] for c in single.choices[0].message.tool_calls] == ["Paris"]


def test_tool_choice_required_named_none(client):
    named = {"type": "function", "function": {"name": "get_weather"}}
    out = client.chat.completions.create(
        model=MODEL, messages=WEATHER_Q, tools=[WEATHER_TOOL], tool_choice=named, **GREEDY
    ).choices[0]
    assert out.message.tool_calls[0].function.name == "get_weather" and out.finish_reason == "stop"
    assert json.loads(out.message.tool_calls[0].function.arguments) == {"location": "Paris"}
    out = client.chat.completions.create(
        model=MODEL, messages=WEATHER_Q, tools=[WEATHER_TOOL], tool_choice="required", **GREEDY
    ).choices[0]
    assert out.message.tool_calls[0].function.name == "get_weather" and out.finish_reason == "tool_calls"
    out = client.chat.completions.create(
        model=MODEL, messages=WEATHER_Q, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=40, **GREEDY
    ).choices[0]
    assert out.message.tool_calls is None and out.finish_reason in ("stop", "length")


def test_images_by_url_and_base64_change_the_answer(client, image_server):
    def ask(url: str) -> str:
        return (
            client.chat.completions.create(model=MODEL, messages=image_messages(url), **GREEDY)
            .choices[0]
            .message.content
        )

    assert ask(f"{image_server}/red.png") == "A red square."
    assert ask(data_url(BLUE_SQUARE)) == "A blue square."
    assert ask(f"{image_server}/red.gif") == "A red square."
    assert ask(f"{image_server}/example1b.jpg") == "A red square."


def test_sampling_controls(client):
    out = client.chat.completions.create(model=MODEL, messages=HELLO, stop=["help"], **GREEDY).choices[0]
    assert out.message.content == "Hello! How can I " and out.finish_reason == "stop"
    out = client.chat.completions.create(model=MODEL, messages=HELLO, max_completion_tokens=3, **GREEDY)
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 3
    sampled = dict(
        model=MODEL,
        messages=HELLO,
        temperature=1.5,
        top_p=0.9,
        seed=1234,
        max_tokens=12,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        extra_body={"top_k": 50, "min_p": 0.01},
    )
    a = client.chat.completions.create(**sampled).choices[0].message.content
    b = client.chat.completions.create(**sampled).choices[0].message.content
    assert a == b  # the same seed samples the same tokens
    out = client.chat.completions.create(model=MODEL, messages=HELLO, n=2, logprobs=True, top_logprobs=3, **GREEDY)
    assert [c.message.content for c in out.choices] == [HELLO_REPLY, HELLO_REPLY]
    lps = out.choices[0].logprobs.content
    assert "".join(t.token for t in lps).startswith(HELLO_REPLY)
    assert all(
        len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token for t in lps
    )  # greedy: the top one is chosen


async def test_concurrent_async_streams(base):
    async with async_client(base) as aclient:
        await _concurrent_streams(aclient)


async def _concurrent_streams(aclient):
    async def one() -> str:
        stream = await aclient.chat.completions.create(model=MODEL, messages=HELLO, stream=True, **GREEDY)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    assert await asyncio.gather(*(one() for _ in range(8))) == [HELLO_REPLY] * 8


def test_langchain_tools_and_stream(base):
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(model=MODEL, base_url=base, api_key="not-needed", temperature=0)
    ai = model.bind_tools([WEATHER_TOOL]).invoke("What is the weather in Paris?")
    assert [(c["name"], c["args"]) for c in ai.tool_calls] == [("get_weather", {"location": "Paris"})]
    assert "".join(chunk.content for chunk in model.stream("Hello!")) == HELLO_REPLY


def test_completions_text_and_token_ids(client, live_server):
    tok = live_server.backend.tokenizer
    prompt = tok.apply_chat_template(HELLO, tokenize=False, add_generation_prompt=True)
    out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=30, temperature=0)
    assert out.choices[0].text == HELLO_REPLY and out.choices[0].finish_reason == "stop"
    ids = tok.encode(prompt, add_special_tokens=False)
    out = client.completions.create(model=MODEL, prompt=ids, max_tokens=30, temperature=0, logprobs=2)
    assert out.choices[0].text == HELLO_REPLY and out.usage.prompt_tokens == len(ids)
    assert len(out.choices[0].logprobs.tokens) == out.usage.completion_tokens
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model=MODEL, prompt=ids, max_tokens=30, temperature=0, stream=True)
    )
    assert streamed == HELLO_REPLY


def test_models_health_metrics(base, live_server):
    models = httpx.get(base + "/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL] and models["data"][0]["max_model_len"] == 8192
    for path in ("/v1/health/ready", "/v1/health/live", "/health"):
        assert httpx.get(live_server.base_url + path).status_code == 200
    metrics = httpx.get(live_server.base_url + "/metrics").text
    assert (
        'gemma_requests_total{endpoint="/v1/chat/completions",model_name="google/gemma-4-26b-a4b-it",status="200"}'
        in metrics
    )
    for name in (
        "gemma_time_to_first_token_seconds_count",
        "gemma_inter_token_latency_seconds_count",
        "gemma_e2e_request_latency_seconds_count",
        "gemma_num_requests_running",
        "gemma_num_requests_waiting",
        "gemma_kv_cache_usage_perc",
    ):
        assert name in metrics
    ttft_count = next(
        line for line in metrics.splitlines() if line.startswith("gemma_time_to_first_token_seconds_count")
    )
    assert float(ttft_count.split()[-1]) > 0


# == 3. errors, and disconnects ====================================================================


def test_error_statuses_and_envelopes(base, live_server, image_server):
    assert_envelope(
        post(base, {"model": MODEL, "messages": HELLO, "stream_options": {"include_usage": True}}),
        400,
        "stream_options",
    )
    assert_envelope(post(base, {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}), 400)
    assert_envelope(post(base, {"model": MODEL, "messages": HELLO + HELLO}), 400, "alternate")
    assert_envelope(
        post(base, {"model": MODEL, "messages": HELLO, "max_tokens": 100_000}), 400, "maximum context length"
    )
    assert_envelope(post(base, {"model": "gpt-4o", "messages": HELLO}), 404, "gpt-4o")
    err = assert_envelope(post(base, {"model": MODEL, "messages": image_messages(f"{image_server}/red.bmp")}), 400)
    assert "BMP" in err["message"]
    too_many = [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": data_url(RED_SQUARE)}}] * (MAX_IMAGES + 1),
        }
    ]
    assert_envelope(post(base, {"model": MODEL, "messages": too_many}), 400, f"At most {MAX_IMAGES} image(s)")
    assert_envelope(post(base, {"model": MODEL, "messages": image_messages(f"{image_server}/missing.png")}), 400)
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}
    assert_envelope(post(base, big), 413, "too large")
    secured = live_server.secured_url + "/v1"
    assert_envelope(httpx.get(secured + "/models"), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=secured, api_key="wrong", max_retries=0).chat.completions.create(
            model=MODEL, messages=HELLO
        )
    ok = openai.OpenAI(base_url=secured, api_key=API_KEY, max_retries=0)
    assert ok.chat.completions.create(model=MODEL, messages=HELLO, **GREEDY).choices[0].message.content == HELLO_REPLY
    # that server keeps the default image policy: a loopback image URL is refused (SSRF guard)
    with pytest.raises(openai.BadRequestError) as e:
        ok.chat.completions.create(model=MODEL, messages=image_messages(f"{image_server}/red.png"))
    assert "127.0.0.1" in e.value.message or "address" in e.value.message


def _wait_stats(backend, predicate, what: str, timeout: float = 10.0):
    """Backend stats are read live in process and polled from Triton's metrics: wait, don't sample once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = backend.stats()
        if predicate(s):
            return s
        time.sleep(0.05)
    raise AssertionError(f"{what}: {backend.stats()}")


def _wait_idle(backend):
    _wait_stats(
        backend,
        lambda s: s.num_running == 0 and s.num_waiting == 0 and s.kv_blocks_free == s.kv_blocks_total,
        "the engine did not free the request",
    )


def test_client_disconnect_aborts_and_frees_kv(base, live_server):
    backend = live_server.backend
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 6000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", base + "/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
        _wait_stats(
            backend,
            lambda s: s.num_running == 1 and s.kv_blocks_free < s.kv_blocks_total,
            "the streaming request should hold KV blocks",
        )
    _wait_idle(backend)  # the stream was closed after a few chunks: aborted, KV blocks back
    # a non-streaming client that gives up (timeout) aborts its request too
    with pytest.raises(httpx.ReadTimeout):
        post(base, {**body, "stream": False}, timeout=httpx.Timeout(60, read=1.0))
    _wait_idle(backend)
    assert client_still_works(base)


def client_still_works(base: str) -> bool:
    r = post(base, {"model": MODEL, "messages": HELLO, **GREEDY})
    return r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == HELLO_REPLY


def test_engine_failure_after_streaming_began_is_an_error_event_then_done(base, live_server, monkeypatch):
    """Fault injection into the real engine: a step fails after the 200 and some chunks went out."""
    from server.backend import EmbeddedBackend

    if not isinstance(live_server.backend, EmbeddedBackend):
        pytest.skip("the engine runs inside tritonserver: no fault to inject from this process")
    if not hasattr(live_server.backend.engine.engine, "runner"):
        pytest.skip("the engine runs in its worker process: test_engine_process_server.py injects it there")
    fail_on_step(monkeypatch, live_server.backend.engine.engine.runner, 4)
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 50, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", base + "/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        events = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    assert FAULT in error_after_text(events)["message"]
    monkeypatch.undo()
    _wait_idle(live_server.backend)
    assert client_still_works(base)
