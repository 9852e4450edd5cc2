"""The HTTP layer's errors with a scripted backend: validation errors as 400 envelopes, context length and
runtime refusals, unknown models and aliases, the API key, the body limit, and images (formats, limits,
a text-only engine). Driven by the real `openai` SDK where it can be."""

from __future__ import annotations

import base64
import io
import json

import openai
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.settings import ServerSettings

try:
    from ._server_fakes import FakeBackend, Script, tiny_spec
    from ._server_http_support import MODEL, TOOLS, USER, assert_envelope, scripted_server
except ImportError:
    from _server_fakes import FakeBackend, Script, tiny_spec
    from _server_http_support import MODEL, TOOLS, USER, assert_envelope, scripted_server


@pytest.fixture
def server(request):
    yield from scripted_server(request.param)


# -- errors: status and envelope --------------------------------------------------------------------


BAD_BODIES = [
    ({"messages": USER, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"messages": []}, "messages"),
    ({"messages": USER, "n": 0}, "n"),
    ({"messages": USER, "temperature": 5}, "temperature"),
    ({"messages": USER, "top_logprobs": 2}, "top_logprobs"),
    ({"messages": USER, "tool_choice": "required"}, "tools"),
    ({"messages": USER, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "nope"),
    ({"messages": USER, "response_format": {"type": "json_schema"}}, "response_format"),
    ({"messages": USER, "max_tokens": 0}, "max_tokens"),
    ({"messages": USER, "continue_final_message": True}, "continue_final_message"),
]


@pytest.mark.parametrize("server", [Script(["x"])], indirect=True)
def test_validation_errors_are_400_envelopes(server):
    _, client, _ = server
    for body, needle in BAD_BODIES:
        err = assert_envelope(client.post("/v1/chat/completions", json=body), 400)
        assert needle in err["message"] or needle == err["param"], (body, err)
        assert err["type"] == "invalid_request_error"
    assert_envelope(
        client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}), 400
    )
    assert_envelope(client.post("/v1/completions", json={"prompt": [99999]}), 400, contains="token ids")


@pytest.mark.parametrize("server", [Script(["x"])], indirect=True)
def test_context_length_and_runtime_refusal(server):
    backend, client, sdk = server
    err = assert_envelope(
        client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 1000}),
        400,
        param="max_completion_tokens",
    )
    assert err["code"] == "context_length_exceeded"
    long_prompt = [{"role": "user", "content": "word " * 400}]
    assert (
        assert_envelope(client.post("/v1/chat/completions", json={"messages": long_prompt}), 400)["code"]
        == "context_length_exceeded"
    )
    assert_envelope(client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1000}), 400, param="max_tokens")
    backend.script = Script(["x"], refuse="image too large for the engine")
    assert_envelope(
        client.post("/v1/chat/completions", json={"messages": USER, "stream": True}), 400, contains="image too large"
    )
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model=MODEL, messages=USER)


@pytest.mark.parametrize("server", [Script(["x"])], indirect=True)
def test_unknown_model_404(server):
    _, client, sdk = server
    with pytest.raises(openai.NotFoundError) as e:
        sdk.chat.completions.create(model="gpt-4", messages=USER)
    assert "gpt-4" in e.value.message
    assert_envelope(client.post("/v1/completions", json={"model": "nope", "prompt": "hi"}), 404)


@pytest.mark.parametrize(
    "server", [(Script(["hello"]), {"model_aliases": ("google/gemma-4-26b-a4b-it",)})], indirect=True
)
def test_model_aliases_are_listed_and_answered(server):
    _, client, sdk = server
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids[1:] == ["google/gemma-4-26b-a4b-it"] and ids[0] != ids[1]
    assert client.get("/v1/models/google/gemma-4-26b-a4b-it").json()["id"] == "google/gemma-4-26b-a4b-it"
    r = sdk.chat.completions.create(model="google/gemma-4-26b-a4b-it", messages=USER)
    assert r.choices[0].message.content == "hello"
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="google/gemma-4-31b-it", messages=USER)


@pytest.mark.parametrize("server", [(Script(["x"]), {"api_key": "sekret"})], indirect=True)
def test_api_key(server):
    _, client, _ = server
    assert_envelope(client.post("/v1/chat/completions", json={"messages": USER}), 401)
    assert_envelope(client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    assert client.get("/v1/models", headers={"Authorization": "Bearer sekret"}).status_code == 200
    assert client.get("/v1/health/ready").status_code == 200  # health and metrics stay open
    assert client.get("/metrics").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url="http://testserver/v1", api_key="wrong", http_client=client).models.list()


@pytest.mark.parametrize("server", [(Script(["x"]), {"max_request_bytes": 2000})], indirect=True)
def test_body_over_limit_is_413(server):
    _, client, _ = server
    big = [{"role": "user", "content": "x" * 5000}]
    assert_envelope(client.post("/v1/chat/completions", json={"messages": big}), 413, contains="too large")

    def chunked():  # no Content-Length: the limit is enforced while reading
        yield json.dumps({"messages": big}).encode()

    assert_envelope(
        client.post("/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"}), 413
    )
    assert client.post("/v1/chat/completions", json={"messages": USER}).status_code == 200


def png_data_url(fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(buf, format=fmt)
    mime = {"PNG": "png", "BMP": "bmp", "GIF": "gif", "JPEG": "jpeg"}[fmt]
    return f"data:image/{mime};base64," + base64.b64encode(buf.getvalue()).decode()


def image_message(*urls: str) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": "What is this?"}]
            + [{"type": "image_url", "image_url": {"url": u}} for u in urls],
        }
    ]


@pytest.mark.parametrize("server", [(Script(["A red square."]), {"max_images_per_prompt": 2})], indirect=True)
def test_images_reach_the_runtime_and_limits(server):
    backend, client, _ = server
    for fmt in ("PNG", "GIF", "JPEG"):
        r = client.post("/v1/chat/completions", json={"messages": image_message(png_data_url(fmt))})
        assert r.status_code == 200, r.text
        assert backend.requests[-1].images[0] == base64.b64decode(png_data_url(fmt).split(",", 1)[1])
    assert backend.tokenizer.decode(backend.requests[-1].prompt).count("<|image|>") == 1
    err = assert_envelope(
        client.post("/v1/chat/completions", json={"messages": image_message(*[png_data_url()] * 3)}), 400
    )
    assert "At most 2 image(s)" in err["message"]
    err = assert_envelope(
        client.post("/v1/chat/completions", json={"messages": image_message(png_data_url("BMP"))}), 400
    )
    assert "BMP" in err["message"]
    assert_envelope(
        client.post("/v1/chat/completions", json={"messages": image_message("file:///etc/passwd")}),
        400,
        contains="file",
    )
    assert_envelope(
        client.post("/v1/chat/completions", json={"messages": image_message("http://127.0.0.1:1/x.png")}), 400
    )


def test_text_only_engine_refuses_images():
    backend = FakeBackend(Script(["x"]), spec=tiny_spec(vision=False))
    with TestClient(create_app(ServerSettings(), backend)) as client:
        assert_envelope(
            client.post("/v1/chat/completions", json={"messages": image_message(png_data_url())}),
            400,
            contains="does not accept images",
        )
