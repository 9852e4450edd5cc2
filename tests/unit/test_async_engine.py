"""AsyncEngine: the engine loop on its own thread, concurrent streams, abort on consumer exit."""

from __future__ import annotations

import asyncio

import pytest

from gemma_runtime.api import GenerateRequest, RequestError, SamplingParams
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.async_engine import AsyncEngine
from gemma_runtime.engine.engine_process import ProcessAsyncEngine
from tests.fault_injection import FAULT, fail_on_step

PROMPT = "<bos><|turn>user\nHi there<turn|>\n<|turn>model\n"


@pytest.fixture(scope="module", params=["sync", "overlap+graphs", "process"])
def engine(random_tiny_engine_dir, request):
    """The plain engine, the GPU's decode path (overlapped steps, padded decode graphs run eagerly), and
    the plain engine in a process of its own (`--engine-process`)."""
    fast = dict(overlap_scheduling=True, decode_graph_max_batch=8) if request.param == "overlap+graphs" else {}
    kind = ProcessAsyncEngine if request.param == "process" else AsyncEngine
    eng = kind.from_engine_dir(random_tiny_engine_dir, RuntimeConfig(block_size=4, max_model_len=256, **fast))
    eng.start()
    yield eng
    eng.shutdown()


async def collect(engine, request):
    return [o async for o in engine.generate(request)]


async def wait_for_idle(engine, free_blocks: int) -> None:
    for _ in range(200):
        s = engine.stats()
        if s.num_running == 0 and s.num_waiting == 0 and s.kv_blocks_free == free_blocks:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"engine did not go idle: {engine.stats()}")


async def test_concurrent_streams_match_sequential_greedy(engine):
    free = engine.stats().kv_blocks_free
    requests = [
        GenerateRequest(f"c{i}", PROMPT + "x" * i, SamplingParams(max_tokens=16, ignore_eos=True)) for i in range(8)
    ]
    together = await asyncio.gather(*(collect(engine, r) for r in requests))
    for r, outs in zip(requests, together):
        alone = await collect(engine, GenerateRequest(r.request_id + "-alone", r.prompt, r.sampling))
        assert [t for o in outs for t in o.token_ids] == [t for o in alone for t in o.token_ids]
        assert outs[-1].finished and outs[-1].usage.completion_tokens == 16
    await wait_for_idle(engine, free)


async def test_consumer_that_stops_reading_aborts_the_request(engine):
    free = engine.stats().kv_blocks_free
    stream = engine.generate(GenerateRequest("gone", PROMPT, SamplingParams(max_tokens=200, ignore_eos=True)))
    got = 0
    async for _ in stream:
        got += 1
        if got == 3:
            break
    await stream.aclose()
    await wait_for_idle(engine, free)


async def test_cancelled_task_aborts_the_request(engine):
    free = engine.stats().kv_blocks_free
    started = asyncio.Event()

    async def consume():
        async for _ in engine.generate(
            GenerateRequest("cancel-me", PROMPT, SamplingParams(max_tokens=200, ignore_eos=True))
        ):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for_idle(engine, free)


async def test_explicit_abort_finishes_the_stream(engine):
    outs = []

    async def consume():
        async for o in engine.generate(
            GenerateRequest("abort-me", PROMPT, SamplingParams(max_tokens=200, ignore_eos=True))
        ):
            outs.append(o)
            if len(outs) == 2:
                await engine.abort("abort-me")

    await asyncio.wait_for(consume(), timeout=60)
    assert outs[-1].finished and outs[-1].finish_reason == "abort"


async def test_bad_request_raises_before_streaming(engine):
    with pytest.raises(RequestError):
        await collect(engine, GenerateRequest("bad", [5] * 1000, SamplingParams(max_tokens=1)))


async def test_a_failing_step_fails_its_requests_and_the_loop_goes_on(engine, monkeypatch):
    """Fault injection: one model step raises. Its requests end with the error, their pages come back,
    and the engine serves the next request."""
    if isinstance(engine, ProcessAsyncEngine):
        pytest.skip("the runner lives in the worker process: tests/unit/test_engine_process.py fails a step there")
    free = engine.stats().kv_blocks_free
    fail_on_step(monkeypatch, engine.engine.runner, 3)
    with pytest.raises(RuntimeError, match=FAULT):
        await collect(engine, GenerateRequest("doomed", PROMPT, SamplingParams(max_tokens=20, ignore_eos=True)))
    await wait_for_idle(engine, free)
    outs = await collect(engine, GenerateRequest("after", PROMPT, SamplingParams(max_tokens=5, ignore_eos=True)))
    assert outs[-1].finished and outs[-1].usage.completion_tokens == 5


async def test_one_wake_up_per_engine_step_not_per_output(engine, monkeypatch):
    """8 streams decoding together: each step's outputs reach the loop in one `call_soon_threadsafe` (one
    self-pipe write and callback), not one per output; every output still arrives, in order."""
    loop = asyncio.get_running_loop()
    calls = []
    real = loop.call_soon_threadsafe

    def counting(callback, *args, **kwargs):
        calls.append(callback)
        return real(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    requests = [GenerateRequest(f"w{i}", PROMPT, SamplingParams(max_tokens=12, ignore_eos=True)) for i in range(8)]
    together = await asyncio.gather(*(collect(engine, r) for r in requests))
    outputs = sum(len(outs) for outs in together)
    assert all(sum(len(o.token_ids) for o in outs) == 12 and outs[-1].finished for outs in together)
    assert len(calls) < outputs / 2, (len(calls), outputs)  # 8 streams in one batch: ~1/8 of the outputs
