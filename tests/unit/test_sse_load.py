"""bench/sse_load.py, the lean load generator of `python -m bench.http_overhead`: it must count what the
server streamed exactly as an SDK client does, and refuse a stream that did not complete."""

from __future__ import annotations

import asyncio

import pytest

from bench.http_overhead import over_http
from bench.sse_load import completion_tokens, dechunk
from bench.uvicorn_thread import UvicornThread
from server.app import create_app
from server.settings import ServerSettings

try:
    from ._server_fakes import FakeBackend, Script
except ImportError:
    from _server_fakes import FakeBackend, Script

EVENTS = (
    b'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}\n\n'
    b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n'
    b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 7}}\n\n'
    b"data: [DONE]\n\n"
)
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, pos = [], 0
    for size in sizes:
        piece = body[pos : pos + size]
        pos += size
        out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
    assert pos >= len(body)
    return b"".join(out) + b"0\r\n\r\n"


def test_dechunk_joins_chunks_cut_anywhere():
    assert dechunk(chunked(EVENTS, [5, 90, 1, 400])) == EVENTS
    assert dechunk(b"3;ext=1\r\nabc\r\n0\r\n\r\n") == b"abc"  # a chunk extension is ignored


def test_the_usage_of_a_complete_stream_is_its_count():
    assert completion_tokens(HEAD + chunked(EVENTS, [17, 1000])) == 7


@pytest.mark.parametrize(
    "response, message",
    [
        (b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{}", "503"),
        (HEAD + chunked(EVENTS[: -len(b"data: [DONE]\n\n")], [1000]), "[DONE]"),
        (HEAD + chunked(EVENTS.replace(b'"usage"', b'"other"'), [1000]), "no usage"),
    ],
)
def test_an_incomplete_or_refused_stream_fails_the_run(response, message):
    with pytest.raises(RuntimeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        completion_tokens(response)


def test_raw_and_httpx_readers_count_the_same_tokens_over_real_http():
    backend = FakeBackend(Script([f"w{i} " for i in range(9)]))
    with UvicornThread(create_app(ServerSettings(), backend)) as server:
        raw = asyncio.run(over_http(server.base_url, 4, 9, "raw"))
        sdk = asyncio.run(over_http(server.base_url, 4, 9, "httpx"))
    assert raw[0] == sdk[0] == 4 * 9
    assert len(backend.finished) == 8 and not backend.aborted


@pytest.mark.parametrize("module", ["bench.http_overhead", "server.bench"])
def test_the_whole_bench_runs_under_both_names(module, random_tiny_engine_dir):
    """The command end to end on a real engine: a pair per --repeat and the summary, under its name and
    under `server.bench`, the name it had when the streaming issue quoted it."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", module, "--engine", str(random_tiny_engine_dir), "--streams", "2", "--tokens", "4"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "runtime alone" in proc.stdout and "% of the rate" in proc.stdout
    assert "summary over 1 pairs: HTTP keeps" in proc.stdout
