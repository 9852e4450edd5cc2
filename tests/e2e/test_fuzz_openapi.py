"""schemathesis over the server's own /openapi.json, against the real runtime (a tiny random engine,
its context capped so any generated request finishes quickly), over loopback HTTP: no 5xx, every error
in the OpenAI envelope, status codes, content types and bodies as the document says. Bounded: a fixed
example count per operation."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bench.uvicorn_thread import UvicornThread  # noqa: E402

EXAMPLES = 25  # per operation


@pytest.fixture(scope="module")
def fuzz_base(random_tiny_engine_dir):
    from gemma_runtime.config import RuntimeConfig
    from server.app import create_app
    from server.backend import EmbeddedBackend
    from server.settings import ServerSettings

    backend = EmbeddedBackend.from_engine_dir(
        random_tiny_engine_dir, RuntimeConfig(max_num_seqs=16, max_model_len=96, device="cpu")
    )
    with UvicornThread(create_app(ServerSettings(), backend)) as srv:
        yield srv.base_url


def test_openapi_fuzz(fuzz_base):
    schema = schemathesis.openapi.from_url(fuzz_base + "/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    seen = []
    for result in schema.get_all_operations():
        operation = result.ok()
        seen.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def fuzz(case):
            response = case.call(base_url=fuzz_base, timeout=60)
            case.validate_response(response, checks=checks)
            if response.status_code >= 400:
                error = response.json()["error"]
                assert isinstance(error["message"], str) and isinstance(error["type"], str)

        fuzz()
    assert "POST /v1/chat/completions" in seen and "POST /v1/completions" in seen and "GET /v1/models" in seen
