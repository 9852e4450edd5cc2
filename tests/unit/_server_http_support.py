"""Shared by the HTTP layer tests over a scripted backend (test_server_http*.py, test_responses_http.py): the
request pieces (model, messages, tools, scripted texts), the app and its TestClient around a FakeBackend,
the `server` fixture's body, raw SSE events, and the error-envelope check."""

from __future__ import annotations

import json

import openai
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
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "Time", "parameters": {"type": "object", "properties": {}}},
    },
]
CALL_TEXT = '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>'
THINK_TEXT = "<|channel>thought\nThe user asks. I answer.<channel|>It is sunny."


def pieces(text: str, size: int = 3) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def make(script: Script, **settings):
    backend = FakeBackend(script)
    app = create_app(ServerSettings(**settings), backend)
    return backend, TestClient(app)


def scripted_server(param):
    """The `server` fixture of the HTTP tests, for an indirect parameter `Script` or `(Script, settings)`:
    yields (backend, client, sdk) with the app's lifespan running."""
    script, settings = param if isinstance(param, tuple) else (param, {})
    backend, client = make(script, **settings)
    with client:
        yield (
            backend,
            client,
            openai.OpenAI(base_url="http://testserver/v1", api_key="k", http_client=client, max_retries=0),
        )


def sse_events(client: TestClient, body: dict) -> list:
    """Raw SSE data payloads, in order ('[DONE]' kept as a string)."""
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = []
    for block in raw.split("\n\n"):
        if block.strip():
            assert block.startswith("data: ")
            data = block[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def assert_envelope(r, status: int, *, contains: str = "", param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert contains in err["message"]
    if param is not None:
        assert err["param"] == param
    return err
