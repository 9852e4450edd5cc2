"""One SSE event from a JSON object, serialised with orjson: streaming writes one event per token per
stream, and the standard library's encoder was a visible share of the server's CPU time per token
(`python -m bench.http_overhead`). orjson keeps non-ASCII text as UTF-8, as `ensure_ascii=False` did."""

from __future__ import annotations

import orjson


def sse_event(obj: dict) -> str:
    return f"data: {orjson.dumps(obj).decode()}\n\n"
