"""Cancellation through the session's tritonserver frees the request's KV blocks: the translator's abort,
its consumer leaving, tritonclient's stream cancellation and an HTTP generate_stream disconnect, each
checked on Triton's metrics."""

from __future__ import annotations

import asyncio
import queue

import httpx
import pytest

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")

from gemma_runtime.api import GenerateRequest, SamplingParams  # noqa: E402
from tests.e2e.triton_support import PROMPTS, _metrics, _wait_for, session_loop  # noqa: E402
from triton_bridge import protocol  # noqa: E402
from triton_bridge.client import numpy_inputs_to_grpc  # noqa: E402


async def _start_long(backend, rid: str):
    outs: list = []

    async def run():
        async for out in backend.generate(
            GenerateRequest(rid, PROMPTS[3], SamplingParams(max_tokens=3000, ignore_eos=True))
        ):
            outs.append(out)

    task = asyncio.create_task(run())
    while len(outs) < 3:
        assert not task.done(), task
        await asyncio.sleep(0.01)
    return task, outs


def _busy(server):
    m = _metrics(server)
    return m if m["num_running"] >= 1 and m["kv_blocks_free"] < m["kv_blocks_total"] else None


def _idle(server):
    m = _metrics(server)
    return (
        m if m["num_running"] == 0 and m["num_waiting"] == 0 and m["kv_blocks_free"] == m["kv_blocks_total"] else None
    )


@session_loop
async def test_abort_cancels_the_triton_request_and_frees_kv_blocks(triton):
    task, outs = await _start_long(triton.backend, "long1")
    await asyncio.to_thread(_wait_for, lambda: _busy(triton.server), 10, "the request to hold KV blocks")
    await triton.backend.abort("long1")
    await asyncio.wait_for(task, 10)
    assert outs[-1].finished and outs[-1].finish_reason == "abort"
    assert len(outs) < 3000
    await asyncio.to_thread(_wait_for, lambda: _idle(triton.server), 10, "KV blocks to be freed")


@session_loop
async def test_consumer_leaving_cancels_the_triton_request(triton):
    stream = triton.backend.generate(
        GenerateRequest("long2", PROMPTS[4], SamplingParams(max_tokens=3000, ignore_eos=True))
    )
    async for _ in stream:
        break
    await asyncio.to_thread(_wait_for, lambda: _busy(triton.server), 10, "the request to hold KV blocks")
    await stream.aclose()
    await asyncio.to_thread(_wait_for, lambda: _idle(triton.server), 10, "KV blocks to be freed")


def test_tritonclient_stream_cancellation_frees_kv_blocks(triton):
    request = GenerateRequest("long3", PROMPTS[5], SamplingParams(max_tokens=3000, ignore_eos=True))
    responses: queue.Queue = queue.Queue()
    client = tritonclient_grpc.InferenceServerClient(triton.server.grpc_url)
    client.start_stream(callback=lambda result, error: responses.put(error or result))
    try:
        client.async_stream_infer("gemma4", numpy_inputs_to_grpc(protocol.encode_request(request)), request_id="long3")
        assert not isinstance(responses.get(timeout=30), Exception)
        _wait_for(lambda: _busy(triton.server), 10, "the request to hold KV blocks")
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()
    _wait_for(lambda: _idle(triton.server), 10, "KV blocks to be freed")


@session_loop
async def test_http_generate_stream_disconnect_frees_kv_blocks(triton):
    body = {"text_input": PROMPTS[0], "max_tokens": 3000, "ignore_eos": True}
    async with httpx.AsyncClient(timeout=30) as http:
        async with http.stream("POST", f"{triton.server.http_url}/v2/models/gemma4/generate_stream", json=body) as r:
            events = 0
            async for line in r.aiter_lines():
                events += line.startswith("data: ")
                if events == 3:
                    break
            await asyncio.to_thread(_wait_for, lambda: _busy(triton.server), 10, "the request to hold KV blocks")
    await asyncio.to_thread(_wait_for, lambda: _idle(triton.server), 10, "KV blocks to be freed")
