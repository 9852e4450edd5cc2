"""Server-sent events response that always closes its generator."""

from __future__ import annotations

import anyio
from starlette.responses import StreamingResponse


class SSEResponse(StreamingResponse):
    """A StreamingResponse whose body generator is closed whatever ends the response. Starlette
    leaves it to garbage collection when the client disconnects mid-stream; closing it here runs
    the generator's cleanup at once, which aborts the runtime request and frees its KV blocks."""

    def __init__(self, content) -> None:
        super().__init__(
            content, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()
