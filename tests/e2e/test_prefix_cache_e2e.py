"""Prefix caching seen by users, on both backends (embedded and a real tritonserver): the OpenAI SDK's
`usage.prompt_tokens_details.cached_tokens` on chat and text completions, streaming and not; the
Prometheus counters; and a client that disconnects mid-stream leaves every page free or evictable.
The tiny random engine serves here (the cache needs no sense), so no taught checkpoint is trained."""

from __future__ import annotations

import time
from types import SimpleNamespace

import httpx
import openai
import pytest

from bench.uvicorn_thread import UvicornThread
from tests.e2e.conftest import RUNTIME, SEED_MODEL, free_ports
from tests.e2e.metrics_scrape import scrape, settled

MODEL = SEED_MODEL

# Long enough for many 16-token pages; unique to this module so no other test warms the cache for it.
SYSTEM = "You are the prefix-cache test assistant. " + " ".join(
    f"Rule {i}: answer briefly and politely." for i in range(24)
)


@pytest.fixture(scope="module", params=["embedded", "triton"])
def live_server(request, random_tiny_engine_dir, tmp_path_factory):
    """The OpenAI server in front of each backend, on the tiny random engine (the cache needs no sense):
    in process, then through a real tritonserver of its own."""
    from gemma_runtime.config import RuntimeConfig
    from server.app import create_app
    from server.backend import EmbeddedBackend
    from server.settings import ServerSettings

    triton = None
    if request.param == "embedded":
        backend = EmbeddedBackend.from_engine_dir(random_tiny_engine_dir, RuntimeConfig(**RUNTIME))
    else:
        pytest.importorskip("tritonclient.grpc")
        from triton_bridge.client import TritonBackend
        from triton_bridge.launcher import TritonPorts, start_triton

        log = tmp_path_factory.mktemp("triton-prefix-log") / "tritonserver.log"
        triton = start_triton(
            random_tiny_engine_dir,
            TritonPorts(*free_ports(3)),
            runtime_config=RUNTIME,
            log_path=log,
            timeout=300,
            record_engine_path=False,
        )
        backend = TritonBackend.from_uri(triton.backend_uri, engine_dir=random_tiny_engine_dir)
    app = create_app(ServerSettings(engine_dir=str(random_tiny_engine_dir), served_model_name=SEED_MODEL), backend)
    try:
        with UvicornThread(app) as main:
            yield SimpleNamespace(base_url=main.base_url, backend=backend)
    finally:
        if triton is not None:
            triton.stop()


@pytest.fixture(scope="module")
def base(live_server) -> str:
    return live_server.base_url + "/v1"


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=base, api_key="not-used", max_retries=0, timeout=120)


def _messages(question: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def _counters(base_url: str) -> tuple[float, float]:
    """(prompt tokens looked up, tokens found) from one scrape, so the two agree with each other."""
    found = scrape(base_url, "gemma_prefix_cache_")
    return found["gemma_prefix_cache_queries"], found["gemma_prefix_cache_hits"]


def _settled_counters(base_url: str) -> tuple[float, float]:
    """The counters once they hold still: a reading taken while an earlier test's request is still being
    polled in would be stale."""
    found = settled(base_url, "gemma_prefix_cache_")
    return found["gemma_prefix_cache_queries"], found["gemma_prefix_cache_hits"]


def _wait(predicate, what: str, timeout: float = 10.0):
    """Triton's stats reach the translator by polling: wait, don't sample once."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.05)


def test_chat_reports_cached_tokens(client, live_server):
    first = client.chat.completions.create(model=MODEL, messages=_messages("Hello?"), max_tokens=4, temperature=0)
    assert first.usage.prompt_tokens > 200
    assert first.usage.prompt_tokens_details.cached_tokens < 16  # this system prompt was never seen
    again = client.chat.completions.create(model=MODEL, messages=_messages("Who are you?"), max_tokens=4, temperature=0)
    cached = again.usage.prompt_tokens_details.cached_tokens
    # the system turn is shared: every full 16-token page of it comes from the cache
    assert 200 < cached < again.usage.prompt_tokens and cached % 16 == 0
    stream = client.chat.completions.create(
        model=MODEL,
        messages=_messages("And now?"),
        max_tokens=4,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [c.usage for c in stream if c.usage is not None][-1]
    assert usage.prompt_tokens_details.cached_tokens >= cached


def test_text_completion_reports_cached_tokens(client):
    prompt = SYSTEM + " Text completion follows:"
    client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, temperature=0)
    again = client.completions.create(model=MODEL, prompt=prompt + " more", max_tokens=3, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens > 200
    stream = client.completions.create(
        model=MODEL,
        prompt=prompt + " again",
        max_tokens=3,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [c.usage for c in stream if c.usage is not None][-1]
    assert usage.prompt_tokens_details.cached_tokens > 200


def test_prefix_cache_counters(client, live_server):
    """The counters grow by exactly what the requests' usage reported: every prompt token looked up
    once, and the cached ones counted as hits."""
    base_url = live_server.base_url
    queries_before, hits_before = _settled_counters(base_url)
    prompt_tokens = cached_tokens = 0
    for q in ("Counter one?", "Counter two?"):
        r = client.chat.completions.create(model=MODEL, messages=_messages(q), max_tokens=2, temperature=0)
        prompt_tokens += r.usage.prompt_tokens
        cached_tokens += r.usage.prompt_tokens_details.cached_tokens
    assert cached_tokens > 400  # both share the system turn with the earlier tests' requests
    want = (queries_before + prompt_tokens, hits_before + cached_tokens)
    _wait(lambda: _counters(base_url) == want, f"counters {_counters(base_url)} never reached {want}")


def test_disconnect_mid_stream_leaves_pages_evictable(base, live_server):
    backend = live_server.backend
    body = {
        "model": MODEL,
        "messages": _messages("Tell me everything."),
        "max_tokens": 4000,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", base + "/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
    # aborted: every page is free again or cached and evictable (the gauge counts those as free)
    _wait(
        lambda: (lambda s: s.num_running == 0 and s.kv_blocks_free == s.kv_blocks_total)(backend.stats()),
        f"pages still held after the disconnect: {backend.stats()}",
    )
