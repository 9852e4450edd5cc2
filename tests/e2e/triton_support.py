"""Shared by the tests of the gemma4 model behind a real tritonserver (test_triton*.py): the prompts, the
session event loop mark, and helpers to collect streams, compare outputs, read Triton's metrics, wait
for a condition and make images. Their fixtures (engine_dir, embedded, triton) are in conftest.py."""

from __future__ import annotations

import io
import time
import urllib.request

import numpy as np
import pytest

from triton_bridge import protocol

# grpc.aio binds its completion queue to the first event loop it runs on: every async test here shares
# the session loop.
session_loop = pytest.mark.asyncio(loop_scope="session")

PROMPTS = [
    "Hello world",
    "The quick brown fox",
    "<|turn>user\nWhat is two plus two?<turn|>\n<|turn>model\n",
    "a b c d e f g",
    "Once upon a time",
    "Tell me about Triton",
]


async def _collect(stream) -> list:
    return [out async for out in stream]


def _summary(outs) -> list[tuple]:
    return [(o.token_ids, o.text, o.finished, o.finish_reason, o.stop_reason, o.usage) for o in outs]


def _metrics(server) -> dict[str, float]:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as r:
        return protocol.parse_stats_metrics(r.read().decode())


def _wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _png(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
