"""The seed's requests (../shared/seeds/gemma4-nim-query-api.txt) as written, against the live server
with the taught tiny engine: only the base URL and the image URLs change (images come from a local HTTP
server, and as base64 data URLs). Every test runs against both backends (in process and Triton)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from engine_builder.tiny.taught_corpus import DGX_ANSWER, ITINERARY_QUESTION, RED_SQUARE
from tests.e2e.openai_helpers import MODEL, assert_chat_completion, data_url, image_messages, post

# == 1. the seed's requests as written ============================================================


def test_seed_curl_image_url(base, image_server):
    body = {
        "model": "google/gemma-4-26b-a4b-it",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": f"{image_server}/example1b.jpg"}},
                ],
            }
        ],
        "max_tokens": 1024,
    }
    r = post(base, body)
    assert r.status_code == 200, r.text
    assert_chat_completion(r.json())
    assert r.json()["usage"]["prompt_tokens"] > 280  # the image's soft tokens are in the prompt


def test_seed_openai_sdk_image(base, image_server):
    from openai import OpenAI

    client = OpenAI(base_url=base, api_key="not-used")
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": f"{image_server}/example1b.jpg"}},
            ],
        }
    ]
    chat_response = client.chat.completions.create(
        model="google/gemma-4-26b-a4b-it", messages=messages, max_tokens=1024, stream=False
    )
    assistant_message = chat_response.choices[0].message
    assert assistant_message.role == "assistant" and isinstance(assistant_message.content, str)

    stream = client.chat.completions.create(
        model="google/gemma-4-26b-a4b-it", messages=messages, max_tokens=1024, stream=True
    )
    texts, finish = [], None
    for chunk in stream:
        delta = chunk.choices[0].delta
        if delta and delta.content:
            texts.append(delta.content)
        finish = chunk.choices[0].finish_reason or finish
    assert finish in ("stop", "length")


def test_seed_base64_image(client):
    # the seed's base64 form: the same request with the image inline (JPEG, as in its example)
    out = client.chat.completions.create(
        model="google/gemma-4-26b-a4b-it", messages=image_messages(data_url(RED_SQUARE, "JPEG")), max_tokens=1024
    )
    assert out.choices[0].message.role == "assistant" and out.usage.prompt_tokens > 280


def test_seed_reasoning_curl(base):
    body = {
        "model": "google/gemma-4-26b-a4b-it",
        "messages": [{"role": "user", "content": "What is 25 * 37? Think step by step."}],
        "chat_template_kwargs": {"enable_thinking": True},
        "include_reasoning": True,
        "max_tokens": 4096,
    }
    r = post(base, body)
    assert r.status_code == 200, r.text
    msg = assert_chat_completion(r.json())
    assert "reasoning" in msg  # the field is there (its text depends on sampling)


def test_seed_text_only_stream_curl_and_sdk(base):
    body = {
        "model": "google/gemma-4-26b-a4b-it",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant"},
            {
                "role": "user",
                "content": "Create a detailed itinerary for a week-long adventure trip through Southeast Asia.",
            },
        ],
        "max_tokens": 4096,
        "stream": True,
    }
    assert body["messages"][1]["content"] == ITINERARY_QUESTION
    with httpx.stream(
        "POST", base + "/chat/completions", json=body, headers={"Accept": "application/json"}, timeout=120
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    first = json.loads(lines[0][len("data: ") :])
    assert first["choices"][0]["delta"]["role"] == "assistant"

    from openai import OpenAI

    client = OpenAI(base_url=base, api_key="not-used")
    stream = client.chat.completions.create(
        model="google/gemma-4-26b-a4b-it", messages=body["messages"], max_tokens=4096, stream=True
    )
    pieces = [
        chunk.choices[0].delta.content
        for chunk in stream
        if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content
    ]
    assert isinstance("".join(pieces), str)


def test_seed_multi_turn(base, image_server):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": f"{image_server}/dgx-b200-hero-bm-v2-l580-d.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": "This image shows an **NVIDIA DGX system**, which is NVIDIA's flagship line of AI supercomputers/servers. ...",
        },
        {"role": "user", "content": "When was this system released?"},
    ]
    assert messages[1]["content"] == DGX_ANSWER  # the seed's history is what the tiny model was taught
    r = post(base, {"model": "google/gemma-4-26b-a4b-it", "messages": messages, "max_tokens": 4096})
    assert r.status_code == 200, r.text
    assert_chat_completion(r.json())

    from openai import OpenAI

    client = OpenAI(base_url=base, api_key="not-used")
    chat_response = client.chat.completions.create(
        model="google/gemma-4-26b-a4b-it", messages=messages, max_tokens=4096, stream=False
    )
    assert chat_response.choices[0].message.role == "assistant"


def test_seed_multi_turn_ending_with_assistant_is_400(client):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)
    assert "last message" in e.value.message
    out = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=8,
        extra_body={"add_generation_prompt": False, "continue_final_message": True},
    )
    assert out.choices[0].message.role == "assistant"


def test_seed_langchain_image(base, image_server):
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(model="google/gemma-4-26b-a4b-it", openai_api_base=base, openai_api_key="not-needed")
    message = HumanMessage(
        content=[
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": f"{image_server}/example1b.jpg"}},
        ],
    )
    result = model.invoke([message])
    assert result.type == "ai" and isinstance(result.content, str)
