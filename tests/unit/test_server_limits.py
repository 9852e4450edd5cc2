"""Per-request caps and boundary validation (server/limits.py, server/raw_checks.py,
server/template_vars.py): every client mistake is a 400 in the OpenAI envelope naming its limit, and
a refused request never reaches the template, the tokenizer or the runtime."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.limits import body_cap_bytes, longest_token_chars
from server.settings import ServerSettings
from server.template_vars import template_variables

try:
    from ._server_fakes import FakeBackend, Script, tiny_spec
except ImportError:
    from _server_fakes import FakeBackend, Script, tiny_spec

USER = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def app():
    backend = FakeBackend(Script(["hi"]), spec=tiny_spec(max_model_len=256))
    with TestClient(create_app(ServerSettings(), backend)) as client:
        yield backend, client


def refused(client, body: dict, path: str = "/v1/chat/completions", contains: str = "") -> dict:
    r = client.post(path, json=body)
    assert r.status_code == 400, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and contains in err["message"], err
    return err


def test_template_kwargs_only_the_templates_own_variables(app):
    backend, client = app
    assert (
        client.post(
            "/v1/chat/completions", json={"messages": USER, "chat_template_kwargs": {"enable_thinking": True}}
        ).status_code
        == 200
    )
    injected = {"chat_template": "{{ 7 * 7 }}"}
    err = refused(client, {"messages": USER, "chat_template_kwargs": injected}, contains="chat_template")
    assert "49" not in err["message"] and err["param"] == "chat_template_kwargs"
    for key in ("tokenize", "return_dict", "messages", "add_generation_prompt"):
        refused(client, {"messages": USER, "chat_template_kwargs": {key: False}}, contains=key)
    assert len(backend.requests) == 1  # nothing refused reached the runtime


def test_trust_flag_lets_a_template_through():
    backend = FakeBackend(Script(["hi"]))
    with TestClient(create_app(ServerSettings(trust_request_chat_template=True), backend)) as client:
        r = client.post(
            "/v1/chat/completions", json={"messages": USER, "chat_template_kwargs": {"chat_template": "X{{ 6 * 7 }}"}}
        )
        assert r.status_code == 200
        assert backend.tokenizer.decode(backend.requests[-1].prompt).startswith("X42")


def test_template_variables_of_the_engine_template(app):
    backend, _ = app
    names = template_variables(backend.tokenizer.chat_template)
    assert "enable_thinking" in names
    assert not names & {
        "chat_template",
        "tokenize",
        "return_dict",
        "messages",
        "tools",
        "add_generation_prompt",
        "bos_token",
    }
    assert template_variables(None) == frozenset() and template_variables("{% if %}") == frozenset()


@pytest.mark.parametrize(
    "body, contains",
    [
        ({"stop": ["s"] * 17}, "--max-stop-strings"),
        ({"stop": "x" * 257}, "--max-stop-string-length"),
        ({"seed": 2**63}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"seed": 2**63 - 2, "n": 4}, "seed + n - 1"),
        ({"top_k": 2**40}, "top_k"),
        ({"min_tokens": 10**9}, "min_tokens"),
        ({"stop_token_ids": [10**12]}, "stop_token_ids"),
        ({"temperature": True}, "boolean"),
        ({"n": True}, "boolean"),
        ({"max_tokens": False}, "boolean"),
        ({"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]}, "--max-tools"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "description": "d" * 300_000}}]},
            "--max-tools-bytes",
        ),
    ],
)
def test_chat_caps(app, body, contains):
    backend, client = app
    refused(client, {"messages": USER, **body}, contains=contains)
    assert backend.requests == []


def test_seed_at_the_edges_is_accepted(app):
    backend, client = app
    for seed in (2**63 - 1, -(2**63)):
        assert client.post("/v1/chat/completions", json={"messages": USER, "seed": seed}).status_code == 200
    assert backend.requests[-1].sampling.seed == -(2**63)


def test_lone_surrogates_are_400_not_500(app):
    _, client = app
    for body in (
        '{"messages": [{"role": "user", "content": "a\\ud800b"}]}',
        '{"model": "\\udfff", "messages": [{"role": "user", "content": "hi"}]}',
        '{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udc00"}]}]}',
    ):
        r = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "surrogate" in r.json()["error"]["message"], r.text
    r = client.post("/v1/completions", content='{"prompt": "x\\ud83d"}', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "surrogate" in r.text
    # A valid pair is one character, not a lone surrogate.
    r = client.post(
        "/v1/chat/completions",
        content='{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 200


def test_invalid_utf8_and_malformed_bodies_are_400(app):
    _, client = app
    user = b'"messages": [{"role": "user", "content": "hi"}]'
    for raw in (
        b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',
        b'{"messages": ',
        b"[" * 100_000,
        b"\x00",
        b"{" + user + b', "temperature": 1e999}',
        b"{" + user + b', "top_p": NaN}',
        b"{" + user + b', "max_tokens": 1' + b"0" * 5000 + b"}",
        b"{" + user + b', "n": 2, "n": "x"}',
        b'{"messages": "\\u0000"}',
    ):
        r = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "error" in r.json(), (raw[:20], r.status_code, r.text[:200])


def test_prompts_times_n_is_capped(app):
    backend, client = app
    refused(client, {"prompt": ["a"] * 5, "n": 16}, path="/v1/completions", contains="--max-sequences-per-request")
    refused(client, {"prompt": "a", "logprobs": 21}, path="/v1/completions")
    assert backend.requests == []
    assert client.post("/v1/completions", json={"prompt": ["a"] * 4, "n": 16, "max_tokens": 1}).status_code == 200


def test_size_bound_refuses_before_rendering(app, monkeypatch):
    backend, client = app
    rendered = []
    monkeypatch.setattr(backend.tokenizer, "encode", lambda *a, **k: rendered.append(1) or [1])
    chars = 256 * longest_token_chars(backend.tokenizer)  # at least 256 tokens: over max_model_len
    err = refused(client, {"messages": [{"role": "user", "content": "y" * chars}]}, contains="at least")
    assert err["code"] == "context_length_exceeded"
    err = refused(client, {"prompt": "y" * chars}, path="/v1/completions", contains="at least")
    err = refused(client, {"prompt": list(range(300))}, path="/v1/completions", contains="at least 300")
    assert rendered == [] and backend.requests == []


def test_default_body_cap_follows_the_context_and_images():
    backend = FakeBackend(Script(["hi"]), spec=tiny_spec(max_model_len=256))
    settings = ServerSettings(max_images_per_prompt=1, image_max_bytes=3000)
    expected = body_cap_bytes(256, longest_token_chars(backend.tokenizer), 1, 3000)
    assert expected < 2 * 1024 * 1024
    with TestClient(create_app(settings, backend)) as client:
        big = json.dumps({"messages": [{"role": "user", "content": "z" * expected}]})
        r = client.post("/v1/chat/completions", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and str(expected) in r.json()["error"]["message"]
