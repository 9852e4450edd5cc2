"""Constants and helpers shared by the OpenAI end-to-end tests (the taught model's exact replies)."""

from __future__ import annotations

import base64
import json

import httpx
import openai

from engine_builder.tiny.taught_corpus import IMAGE_QUESTION
from tests.e2e.conftest import SEED_MODEL

MODEL = SEED_MODEL
GREEDY = {"temperature": 0}
HELLO = [{"role": "user", "content": "Hello!"}]
HELLO_REPLY = "Hello! How can I help you today?"
WEATHER_Q = [{"role": "user", "content": "What is the weather in Paris?"}]
THINKING = {"chat_template_kwargs": {"enable_thinking": True}}
MATH_REASONING = "25 * 37 = 25 * 40 - 25 * 3 = 1000 - 75 = 925."
MATH_ANSWER = "25 * 37 = 925."


def async_client(base: str) -> openai.AsyncOpenAI:
    # made inside each test: an async client's connections belong to the event loop that opened them
    return openai.AsyncOpenAI(base_url=base, api_key="not-used", max_retries=0, timeout=120)


def image_messages(url: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": IMAGE_QUESTION}, {"type": "image_url", "image_url": {"url": url}}],
        }
    ]


def data_url(spec, fmt: str = "PNG") -> str:
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(spec.encoded(fmt)).decode()


def post(base: str, body: dict, **kw) -> httpx.Response:
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    return httpx.post(
        base + "/chat/completions", content=json.dumps(body), headers=headers, timeout=kw.pop("timeout", 120), **kw
    )


def assert_chat_completion(body: dict) -> dict:
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    msg = body["choices"][0]["message"]
    assert msg["role"] == "assistant" and isinstance(msg["content"], str)
    assert body["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    return msg


def assert_envelope(r: httpx.Response, status: int, contains: str = "") -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and contains in err["message"]
    return err
