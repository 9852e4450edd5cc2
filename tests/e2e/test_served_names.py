"""The model name a client asked for comes back in every response and stream chunk (chat and
completions, both backends), as OpenAI and vLLM echo served aliases; /v1/models lists every name.
A tiny random engine serves: the replies' words do not matter here, only the names they carry."""

from __future__ import annotations

import importlib.util
import json
import shutil

import httpx
import openai
import pytest

from bench.uvicorn_thread import UvicornThread
from tests.e2e.conftest import free_ports

SERVED = "gemma-demo"
ALIASES = ("google/gemma-4-26b-a4b-it", "google/gemma-4-31b-it")
HELLO = [{"role": "user", "content": "Hello!"}]
SHORT = {"max_tokens": 4, "temperature": 0}
RUNTIME = {"device": "cpu", "max_num_seqs": 4}


def _backend(kind: str, engine_dir, stack):
    from gemma_runtime.config import RuntimeConfig
    from server.backend import EmbeddedBackend

    if kind == "embedded":
        return EmbeddedBackend.from_engine_dir(engine_dir, RuntimeConfig(**RUNTIME))
    if not (shutil.which("tritonserver") or importlib.util.find_spec("pytriton")):
        pytest.skip("no tritonserver on PATH and nvidia-pytriton is not installed")
    from triton_bridge.client import TritonBackend
    from triton_bridge.launcher import TritonPorts, start_triton

    triton = start_triton(
        engine_dir, TritonPorts(*free_ports(3)), runtime_config=RUNTIME, timeout=300, record_engine_path=False
    )
    stack.append(triton.stop)
    return TritonBackend.from_uri(triton.backend_uri, engine_dir=engine_dir)


@pytest.fixture(scope="module", params=["embedded", "triton"])
def aliased(request, random_tiny_engine_dir):
    """A server with a served name of its own and the NIM's names as aliases, in front of each backend."""
    from server.app import create_app
    from server.settings import ServerSettings

    stops: list = []
    try:
        backend = _backend(request.param, random_tiny_engine_dir, stops)
        app = create_app(ServerSettings(served_model_name=SERVED, model_aliases=ALIASES), backend)
        with UvicornThread(app) as server:
            yield server.base_url + "/v1"
    finally:
        for stop in stops:
            stop()


@pytest.mark.parametrize("asked", [ALIASES[0], ALIASES[1], SERVED, "the engine's own name"])
def test_every_chat_and_completion_reply_names_the_model_asked_for(aliased, asked, random_tiny_engine_dir):
    if asked == "the engine's own name":
        asked = json.loads((random_tiny_engine_dir / "engine.json").read_text())["model_name"]
    client = openai.OpenAI(base_url=aliased, api_key="not-used", max_retries=0, timeout=120)
    assert client.chat.completions.create(model=asked, messages=HELLO, **SHORT).model == asked
    chunks = list(
        client.chat.completions.create(
            model=asked, messages=HELLO, stream=True, stream_options={"include_usage": True}, **SHORT
        )
    )
    assert len(chunks) >= 3 and {c.model for c in chunks} == {asked}
    assert client.completions.create(model=asked, prompt="Hello", **SHORT).model == asked
    streamed = list(
        client.completions.create(
            model=asked, prompt="Hello", stream=True, stream_options={"include_usage": True}, **SHORT
        )
    )
    assert len(streamed) >= 2 and {c.model for c in streamed} == {asked}


def test_no_model_gets_the_served_name_and_models_lists_every_name(aliased):
    r = httpx.post(aliased + "/chat/completions", json={"messages": HELLO, **SHORT}, timeout=120)
    assert r.status_code == 200 and r.json()["model"] == SERVED
    assert [m["id"] for m in httpx.get(aliased + "/models").json()["data"]] == [SERVED, *ALIASES]
