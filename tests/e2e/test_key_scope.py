"""`--api-key-scope`: with an API key, health stays open in every scope; `api` (the default) leaves
/metrics and the API docs open, `all` puts them behind the key too. Real servers over HTTP."""

from __future__ import annotations

import httpx
import openai
import pytest

from bench.uvicorn_thread import UvicornThread
from tests.e2e.openai_helpers import HELLO

KEY = "scope-secret"
HEALTH = ("/health", "/v1/health/ready", "/v1/health/live")
OPERATOR = ("/metrics", "/openapi.json", "/docs", "/redoc")


@pytest.fixture(scope="module")
def servers(random_tiny_engine_dir):
    """The runtime on a tiny engine (which backend answers does not matter here) behind two keyed
    servers, one per scope."""
    from gemma_runtime.config import RuntimeConfig
    from server.app import create_app
    from server.backend import EmbeddedBackend
    from server.settings import ServerSettings

    backend = EmbeddedBackend.from_engine_dir(random_tiny_engine_dir, RuntimeConfig(device="cpu", max_num_seqs=4))
    backend.start()
    apps = {
        scope: create_app(ServerSettings(api_key=KEY, api_key_scope=scope), backend, manage_backend=False)
        for scope in ("api", "all")
    }
    try:
        with UvicornThread(apps["api"]) as api, UvicornThread(apps["all"]) as everything:
            yield {"api": api.base_url, "all": everything.base_url}
    finally:
        backend.shutdown()


def status(url: str, key: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(url, headers=headers, timeout=60).status_code


@pytest.mark.parametrize("scope", ["api", "all"])
def test_health_is_open_and_the_api_needs_the_key(servers, scope):
    base = servers[scope]
    assert [status(base + p) for p in HEALTH] == [200, 200, 200]
    assert status(base + "/v1/models") == 401 and status(base + "/v1/models", KEY) == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).chat.completions.create(
            model="x", messages=HELLO
        )


def test_scope_api_leaves_metrics_and_docs_open(servers):
    assert [status(servers["api"] + p) for p in OPERATOR] == [200, 200, 200, 200]


def test_scope_all_puts_metrics_and_docs_behind_the_key(servers):
    base = servers["all"]
    r = httpx.get(base + "/metrics", timeout=60)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert [status(base + p) for p in OPERATOR] == [401, 401, 401, 401]
    assert [status(base + p, "wrong") for p in OPERATOR] == [401, 401, 401, 401]
    assert [status(base + p, KEY) for p in OPERATOR] == [200, 200, 200, 200]
    assert "gemma_requests_total" in httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
