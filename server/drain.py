"""Graceful drain on SIGTERM: readiness turns 503 at once, the process keeps answering, new generation
requests get 503, in-flight ones finish for up to `--drain-timeout` seconds; what is still running then
ends readably (an error event and `[DONE]` for a stream, a 503 for the rest: server/admission.py);
only then does uvicorn stop listening and the backend shut down (lifespan).

uvicorn's own SIGTERM handling closes the listening sockets first and cuts open bodies after
`timeout_graceful_shutdown`; `DrainingServer` runs the drain before handing over to it. A second
SIGTERM, or SIGINT, exits at once as before.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import uvicorn

from server.admission import Admission
from server.errors import APIError

log = logging.getLogger(__name__)

_POLL_S = 0.05
END_GRACE_S = 5.0  # after ending what is left: time for those responses' last bytes


async def drain(admission: Admission, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    admission.draining = True
    log.info("draining: %d request(s) in flight, up to %g s", len(admission.flights), timeout_s)
    deadline = loop.time() + timeout_s
    while admission.flights and loop.time() < deadline:
        await asyncio.sleep(_POLL_S)
    if admission.flights:
        err = APIError(
            f"The server is shutting down and this request did not finish within its drain timeout ({timeout_s:g} s).",
            503,
            code="draining",
        )
        log.warning("drain timeout: ending %d request(s)", admission.end_all(err))
        end = loop.time() + END_GRACE_S
        while admission.flights and loop.time() < end:
            await asyncio.sleep(_POLL_S)
    log.info("drained")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, admission: Admission, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.admission = admission
        self.drain_timeout_s = drain_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None
        self._drain_requested = False

    async def startup(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig, frame) -> None:
        if sig == signal.SIGTERM and not self._drain_requested and self._loop is not None and not self.should_exit:
            self._drain_requested = True
            self._captured_signals.append(sig)  # uvicorn re-raises it on exit, as after its own shutdown
            self._loop.call_soon_threadsafe(self._start_drain)
            return
        super().handle_exit(sig, frame)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.ensure_future(drain(self.admission, self.drain_timeout_s))
        self._drain_task.add_done_callback(lambda _: setattr(self, "should_exit", True))
