"""The load test of test_faults.py through the Triton path: 256 streams at once with random disconnects,
through the OpenAI translator in front of a real tritonserver hosting the tiny random engine. Every kept
stream completes, and afterwards the model reports 0 running, 0 waiting and its KV pages back to the
baseline (its own gauges, read by the translator's client): a client that leaves aborts its request in
the model and frees its pages."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import time

import pytest

from bench.uvicorn_thread import UvicornThread
from tests.e2e.stream_support import settle, storm_of_streams


@pytest.fixture(scope="module")
def triton(random_tiny_engine_dir, tmp_path_factory):
    from triton_bridge.launcher import TritonPorts, start_triton

    if not (shutil.which("tritonserver") or importlib.util.find_spec("pytriton")):
        pytest.skip("no tritonserver on PATH and nvidia-pytriton is not installed")
    from tests.e2e.conftest import free_ports

    log = tmp_path_factory.mktemp("triton-load") / "tritonserver.log"
    server = start_triton(
        random_tiny_engine_dir,
        TritonPorts(*free_ports(3)),
        runtime_config={"max_num_seqs": 16, "device": "cpu"},
        log_path=log,
        timeout=300,
        record_engine_path=False,
        model_params={"max_queued_requests": 256},  # all 256 admitted: this is the load test, not overload
    )
    yield server
    server.stop()


def wait_for_stats(backend, timeout: float = 30):
    """The translator's client polls the model's gauges in the background: wait for the first reading."""
    deadline = time.monotonic() + timeout
    while backend.stats().kv_blocks_total == 0:
        assert time.monotonic() < deadline, "no stats from the model's metrics"
        time.sleep(0.05)
    return backend.stats()


def test_storm_of_streams_with_random_disconnects_through_triton(triton, random_tiny_engine_dir):
    from server.app import create_app
    from server.settings import ServerSettings
    from triton_bridge.client import TritonBackend

    backend = TritonBackend.from_uri(triton.backend_uri, engine_dir=random_tiny_engine_dir)
    with UvicornThread(create_app(ServerSettings(), backend)) as srv:
        baseline = wait_for_stats(backend)
        assert baseline.num_running == 0 and baseline.num_waiting == 0
        plan, results = asyncio.run(storm_of_streams(srv.base_url, 256))
        kept = [r for leave, r in zip(plan, results) if leave is None]
        left = [r for leave, r in zip(plan, results) if leave is not None]
        assert kept and all(r["done"] and r["finish"] == "length" for r in kept)
        assert any(not r["done"] for r in left), "no stream left before its end: the disconnects tested nothing"
        settle(backend, baseline.kv_usage, timeout=60)
