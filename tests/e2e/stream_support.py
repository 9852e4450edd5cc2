"""Shared by the load tests in front of the embedded runtime (test_faults.py) and tritonserver
(test_triton_load.py): a stream reader that can leave early, the storm of streams with random
disconnects, and the wait for the engine to settle back to its baseline; and the check of a stream that
failed after it began (test_openai_features.py, test_engine_process_server.py)."""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx

USER = [{"role": "user", "content": "Hello"}]


async def read_stream(
    client: httpx.AsyncClient, body: dict, leave_after_s: float | None = None, record: dict | None = None
) -> dict:
    """A stream's event times and whether it ended with [DONE] (filled into `record` as they come, so a
    cancelled reader keeps them); `leave_after_s`: disconnect then."""
    rec = record if record is not None else {}
    rec.update(times=[], done=False, finish=None)

    async def consume():
        async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            assert r.status_code == 200, await r.aread()
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    rec["done"] = True
                elif line.startswith("data: "):
                    rec["times"].append(time.perf_counter())
                    choices = json.loads(line[6:]).get("choices") or [{}]
                    rec["finish"] = choices[0].get("finish_reason") or rec["finish"]

    if leave_after_s is None:
        await consume()
    else:
        try:
            await asyncio.wait_for(consume(), leave_after_s)
        except TimeoutError:
            pass
    return rec


def error_after_text(events: list[str]) -> dict:
    """A stream's `data:` payloads that failed after it began: the role chunk and some text went out, then
    an error event in the OpenAI envelope, then `[DONE]`. Returns the error."""
    assert events[-1] == "[DONE]", events[-3:]
    error = json.loads(events[-2])["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    chunks = [json.loads(e) for e in events[:-2]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert any(c["choices"][0]["delta"].get("content") for c in chunks)  # text went out before the failure
    return error


def settle(backend, baseline_kv: float, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        s = backend.stats()
        if s.num_running == 0 and s.num_waiting == 0 and s.kv_usage == baseline_kv:
            return
        assert time.monotonic() < deadline, f"engine did not settle: {s}"
        time.sleep(0.05)


async def storm_of_streams(base: str, count: int, seed: int = 13) -> tuple[list, list[dict]]:
    """`count` streams at once, half of them leaving after a random 0.05-1 s; returns the plan (when each
    leaves, None for the kept ones) and each stream's record."""
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=count + 44, max_keepalive_connections=count + 44)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        plan = [rng.uniform(0.05, 1.0) if rng.random() < 0.5 else None for _ in range(count)]
        body = {"messages": USER, "max_tokens": 8, "ignore_eos": True}
        return plan, await asyncio.gather(*(read_stream(client, body, leave) for leave in plan))
