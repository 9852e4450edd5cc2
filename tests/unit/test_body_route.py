"""Large bodies are parsed and validated on the prompt workers (server/body_route.py), and answered exactly as
FastAPI's own path answers the same body when it is small: each case is sent twice, as is and padded with
JSON whitespace past LARGE_BODY_BYTES (the same JSON value), and both answers must be identical."""

from __future__ import annotations

import json
import threading

import pytest

import server.body_route as body_route

try:
    from ._server_fakes import Script
    from ._server_http_support import USER, scripted_server
except ImportError:
    from _server_fakes import Script
    from _server_http_support import USER, scripted_server

JSON = {"content-type": "application/json"}
PAD = b" " * (body_route.LARGE_BODY_BYTES + 1)

# Raw bodies (bytes), so that the JSON itself can be malformed or carry what json.dumps would not write.
CASES = [
    ("chat", json.dumps({"messages": USER, "max_tokens": 3}).encode()),
    ("chat", json.dumps({"messages": USER, "temperature": True}).encode()),
    ("chat", b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}'),  # a lone surrogate
    ("chat", json.dumps({"messages": []}).encode()),
    ("chat", json.dumps({"messages": USER, "n": 0, "top_logprobs": 2}).encode()),
    ("chat", json.dumps({"messages": USER, "seed": 2**64}).encode()),  # past orjson's range: json.loads decides
    ("chat", json.dumps({"messages": USER, "seed": -(2**63) - 1, "temperature": 1e300}).encode()),
    ("chat", b'{"messages": NaN}'),  # json.loads takes NaN, orjson does not
    ("chat", b'{"messages": [}'),  # not JSON: the same error position either way (the padding comes after)
    ("chat", b"[" * 5000 + b"]" * 5000),  # nested past both parsers' limits
    ("chat", b'{"messages": [{"role": "user", "content": "\xff"}]}'),  # not UTF-8
    ("chat", b'{"messages": [], "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}'),  # last wins
    ("completions", json.dumps({"prompt": "Hello", "max_tokens": 3}).encode()),
    ("completions", json.dumps({"prompt": [99999]}).encode()),
]


@pytest.fixture
def server(request):
    yield from scripted_server(Script(["It is sunny."]))


def answer(client, path: str, body: bytes):
    r = client.post(f"/v1/{'chat/completions' if path == 'chat' else 'completions'}", content=body, headers=JSON)
    data = r.json()
    for volatile in ("id", "created"):  # a fresh id and clock per response
        data.pop(volatile, None)
    return r.status_code, data


def test_large_bodies_answer_as_small_ones_do(server, monkeypatch):
    _, client, _ = server
    threads = []
    real = body_route.parse_and_validate

    def spy(body, model):
        threads.append(threading.current_thread().name)
        return real(body, model)

    monkeypatch.setattr(body_route, "parse_and_validate", spy)
    for path, body in CASES:
        small = answer(client, path, body)
        assert not threads, "a small body went to the workers"
        large = answer(client, path, body + PAD)
        assert threads and threads[-1].startswith("prompt"), f"not parsed on the prompt workers: {threads}"
        threads.clear()
        assert large == small, (body[:80], small, large)
    statuses = [answer(client, path, body)[0] for path, body in CASES]
    assert statuses.count(200) == 3 and set(statuses) == {200, 400}, statuses  # both answers of each kind seen
