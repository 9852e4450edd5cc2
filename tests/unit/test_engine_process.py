"""`--engine-process`: the engine loop in a worker process (gemma_runtime/engine/engine_process.py). It must
change no output (greedy tokens, text, logprobs, usage as the in-process engine gives them), and a fault in
the worker (a failed step, a worker that dies, an engine that does not load) must reach the callers as an
error, never as a stream that hangs. The tests' AsyncEngine cases also run against it (test_async_engine.py)."""

from __future__ import annotations

import asyncio
import functools
import os
import signal

import pytest

from gemma_runtime.api import GenerateRequest, RequestError, SamplingParams
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.async_engine import AsyncEngine
from gemma_runtime.engine.engine_process import EngineProcess, ProcessAsyncEngine
from gemma_runtime.engine.engine_worker import cpu_threads
from gemma_runtime.speculative.registry import SpeculativeUnavailable
from tests.fault_injection import FAULT, serve_failing_on_step

PROMPT = "<bos><|turn>user\nHi there<turn|>\n<|turn>model\n"
CONFIG = RuntimeConfig(block_size=4, max_model_len=256)


async def collect(engine, request):
    return [o async for o in engine.generate(request)]


def requests() -> list[GenerateRequest]:
    plain = [
        GenerateRequest(f"p{i}", PROMPT + "y" * i, SamplingParams(max_tokens=12, ignore_eos=True)) for i in range(5)
    ]
    return plain + [
        GenerateRequest("lp", PROMPT, SamplingParams(max_tokens=6, ignore_eos=True, logprobs=3)),
        GenerateRequest("eos", PROMPT + "z", SamplingParams(max_tokens=40)),  # ends on a stop token or the length
    ]


def run(engine, reqs):
    async def all_of():
        return await asyncio.gather(*(collect(engine, r) for r in reqs))

    engine.start()
    try:
        return asyncio.run(all_of())
    finally:
        engine.shutdown()


def test_the_worker_process_changes_no_output(random_tiny_engine_dir):
    """Greedy, together in one batch: the same outputs, field by field, as the engine on a thread."""
    reqs = requests()
    here = run(AsyncEngine.from_engine_dir(random_tiny_engine_dir, CONFIG), reqs)
    there = run(ProcessAsyncEngine.from_engine_dir(random_tiny_engine_dir, CONFIG), reqs)
    for a, b in zip(here, there):
        assert [(o.token_ids, o.text, o.finished, o.finish_reason, _counts(o)) for o in a] == [
            (o.token_ids, o.text, o.finished, o.finish_reason, _counts(o)) for o in b
        ]
        for x, y in zip(a, b):  # the same tokens; values to float tolerance (the batches were cut differently)
            assert (x.logprobs is None) == (y.logprobs is None)
            for p, q in zip(x.logprobs or (), y.logprobs or ()):
                assert p.token_id == q.token_id and [t for t, _ in p.top] == [t for t, _ in q.top]
                assert p.logprob == pytest.approx(q.logprob, abs=1e-4)
                assert [v for _, v in p.top] == pytest.approx([v for _, v in q.top], abs=1e-4)
    assert sum(len(o.token_ids) for o in there[0]) == 12 and there[5][0].logprobs


def _counts(out):
    """Usage without `cached_tokens`: which prompts find their shared prefix cached depends on when each
    request reached the engine (the worker's pool prepares them one by one), not on the outputs."""
    return out.usage and (out.usage.prompt_tokens, out.usage.completion_tokens)


async def test_the_prefix_cache_serves_through_the_worker(random_tiny_engine_dir):
    engine = ProcessAsyncEngine.from_engine_dir(random_tiny_engine_dir, CONFIG)
    engine.start()
    try:
        sampling = SamplingParams(max_tokens=3, ignore_eos=True)
        first = await collect(engine, GenerateRequest("a", PROMPT * 3, sampling))
        again = await collect(engine, GenerateRequest("b", PROMPT * 3, sampling))
        assert first[-1].usage.cached_tokens == 0 and again[-1].usage.cached_tokens > 0
        assert [o.token_ids for o in first] == [o.token_ids for o in again]
        assert engine.stats().prefix_cache_hits == again[-1].usage.cached_tokens
    finally:
        engine.shutdown()


def test_the_worker_reports_the_engine_it_loaded(random_tiny_engine_dir):
    process = EngineProcess(random_tiny_engine_dir, CONFIG)
    try:
        assert process.healthy() and process.max_model_len == 256 and process.config.block_size == 4
        assert process.stats().num_running == 0 and process.stats().kv_blocks_free > 0
        assert process.spec.model_name and process.tokenizer.encode("hello")
    finally:
        process.close()
    assert not process.healthy() and process.process.exitcode == 0


def test_an_engine_that_does_not_load_raises_its_error_here(random_tiny_engine_dir):
    with pytest.raises(SpeculativeUnavailable, match="no MTP drafter"):  # raised by the worker's LLMEngine
        EngineProcess(random_tiny_engine_dir, RuntimeConfig(block_size=4, max_model_len=256, speculative="mtp"))


async def test_a_failing_step_fails_its_requests_and_the_worker_goes_on(random_tiny_engine_dir):
    engine = ProcessAsyncEngine(
        EngineProcess(random_tiny_engine_dir, CONFIG, worker=functools.partial(serve_failing_on_step, 3))
    )
    engine.start()
    try:
        with pytest.raises(RuntimeError, match=FAULT):
            await collect(engine, GenerateRequest("doomed", PROMPT, SamplingParams(max_tokens=20, ignore_eos=True)))
        with pytest.raises(RequestError):  # a bad request fails alone, prepared in the worker
            await collect(engine, GenerateRequest("bad", [5] * 1000, SamplingParams(max_tokens=1)))
        outs = await collect(engine, GenerateRequest("after", PROMPT, SamplingParams(max_tokens=5, ignore_eos=True)))
        assert outs[-1].finished and outs[-1].usage.completion_tokens == 5
        assert engine.stats().num_running == 0 and engine.health()
    finally:
        engine.shutdown()


async def test_a_worker_that_dies_ends_every_stream_with_an_error(random_tiny_engine_dir):
    engine = ProcessAsyncEngine.from_engine_dir(random_tiny_engine_dir, CONFIG)
    engine.start()
    try:
        got = asyncio.Event()

        async def consume(i: int):
            async for _ in engine.generate(
                GenerateRequest(f"long{i}", PROMPT, SamplingParams(max_tokens=200, ignore_eos=True))
            ):
                got.set()

        tasks = [asyncio.create_task(consume(i)) for i in range(3)]
        await asyncio.wait_for(got.wait(), 60)
        os.kill(engine.engine.process.pid, signal.SIGKILL)
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
        assert all(isinstance(r, RuntimeError) and "engine process ended" in str(r) for r in results), results
        assert not engine.health()
        with pytest.raises(RuntimeError, match="not running"):  # a new request fails at once, never hangs
            await asyncio.wait_for(collect(engine, GenerateRequest("late", PROMPT, SamplingParams(max_tokens=2))), 30)
    finally:
        engine.shutdown()


@pytest.mark.parametrize(
    "device, env, cores, threads",
    [
        ("cpu", {}, 2, 1),  # one core left to the server's process
        ("cpu", {}, 16, 15),
        ("cpu", {}, 1, 1),
        ("cpu", {"OMP_NUM_THREADS": "2"}, 2, None),  # the user's choice stands
        ("cuda", {}, 16, None),
        ("cuda:1", {}, 16, None),
    ],
)
def test_a_cpu_worker_leaves_a_core_to_the_server(device, env, cores, threads):
    assert cpu_threads(device, env, cores) == threads


async def test_a_request_that_cannot_cross_the_pipe_fails_alone(random_tiny_engine_dir):
    """An image object pickle refuses (a lock stands in for it): that request gets a RequestError, the worker
    and the next request are untouched."""
    import threading

    engine = ProcessAsyncEngine.from_engine_dir(random_tiny_engine_dir, CONFIG)
    engine.start()
    try:
        with pytest.raises(RequestError, match="cannot reach the engine"):
            await collect(
                engine, GenerateRequest("odd", PROMPT, SamplingParams(max_tokens=2), images=(threading.Lock(),))
            )
        outs = await collect(engine, GenerateRequest("next", PROMPT, SamplingParams(max_tokens=3, ignore_eos=True)))
        assert outs[-1].usage.completion_tokens == 3 and engine.health()
    finally:
        engine.shutdown()


def test_the_worker_takes_every_core_but_one_unless_told(random_tiny_engine_dir, monkeypatch):
    """The policy above, applied in the worker: its torch threads without OMP_NUM_THREADS, and with it."""
    cores = len(os.sched_getaffinity(0))
    for env, expected in ((None, max(1, cores - 1)), ("2", 2)):  # the policy, then the user's own choice
        if env is None:
            monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        else:
            monkeypatch.setenv("OMP_NUM_THREADS", env)
        process = EngineProcess(random_tiny_engine_dir, CONFIG)  # the worker is spawned with this environment
        try:
            assert process.torch_threads == expected, (env, cores)
        finally:
            process.close()
