"""A lean load generator for streamed chat completions: raw HTTP/1.1 over asyncio streams.

On a machine with few cores the load generator shares them with the server it measures, and an SDK-style
client that parses every chunk as it arrives (httpx's line iterator, then `json.loads`) spent about twice the
server's own CPU per streamed token (`python -m bench.http_overhead --reader httpx`): the bench then charged
the server for its client's work. This client only reads bytes while the streams run (`Connection: close`,
read to the end); the chunked framing and every event are parsed after the clock stops, and a stream that
did not complete (not a 200, no `[DONE]`, no deltas or no usage) fails the run.
"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlsplit


def request_bytes(host: str, port: int, path: str, body: dict) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + payload


async def fetch_raw(host: str, port: int, request: bytes) -> bytes:
    """The whole response (status line, headers, chunked body) as it came off the socket."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        parts = []
        while data := await reader.read(1 << 16):
            parts.append(data)
        return b"".join(parts)
    finally:
        writer.close()


def dechunk(body: bytes) -> bytes:
    """An HTTP/1.1 chunked body as the bytes it carries."""
    out, pos = [], 0
    while True:
        line_end = body.index(b"\r\n", pos)
        size = int(body[pos:line_end].split(b";", 1)[0], 16)
        if size == 0:
            return b"".join(out)
        start = line_end + 2
        out.append(body[start : start + size])
        pos = start + size + 2  # the chunk's own CRLF


def completion_tokens(response: bytes) -> int:
    """The tokens one streamed chat completion carried, from its final usage, checked: status 200, a chunked
    SSE body of JSON events ending in `[DONE]`, with deltas and a usage chunk."""
    head, _, body = response.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        raise RuntimeError(f"the server answered {status.decode(errors='replace')}: {body[:300]!r}")
    if b"transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    events = [e[6:] for e in body.split(b"\n\n") if e.startswith(b"data: ")]
    if not events or events[-1] != b"[DONE]":
        raise RuntimeError(f"the stream did not end in [DONE]: {body[-300:]!r}")
    usage, chunks = None, 0
    for event in events[:-1]:
        chunk = json.loads(event)
        if chunk.get("usage"):
            usage = chunk["usage"]["completion_tokens"]
        chunks += sum(1 for choice in chunk.get("choices", ()) if choice.get("delta"))
    if usage is None or chunks == 0:
        raise RuntimeError(f"the stream carried no usage or no deltas: {body[-300:]!r}")
    return usage


async def stream_many(base_url: str, body: dict, streams: int) -> tuple[list[bytes], float]:
    """`streams` concurrent requests of `body`: their raw responses and the seconds until the last ended."""
    url = urlsplit(base_url)
    request = request_bytes(url.hostname, url.port, "/v1/chat/completions", body)
    start = time.perf_counter()
    responses = await asyncio.gather(*(fetch_raw(url.hostname, url.port, request) for _ in range(streams)))
    return responses, time.perf_counter() - start
