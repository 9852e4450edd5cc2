"""Notices, from inside the Python backend's model, that tritonserver is shutting down or unloading it.

Why the model must look for itself: on SIGTERM tritonserver marks itself exiting, waits for the models'
in-flight inferences (a decoupled model has none once `execute` returned), then unloads the models and
waits for them to go; a decoupled model is only finalized once its last stream has ended. So `finalize`,
where a model would cancel what is left, never runs while streams are live: they run on past
`--exit-timeout-secs` and are cut when the process aborts. Nothing is signalled to the stub process.

What the model can see: tritonserver's HTTP endpoint stays up while it waits, and asking it whether this
model is ready (`/v2/models/<name>/versions/<v>/ready`) answers 200 until the server starts exiting (then an
error status) or the model starts unloading. `ShutdownWatch.poll` turns that into one `on_shutdown` call,
which drains the live requests (the model's `drain_timeout`) and then ends the rest readably, so Triton
can finalize the model and exit cleanly. (The Python backend's own `pb_utils.is_model_ready` would ask the
same, but its error path crashed the stub here when the server was exiting: a use-after-free in
python_backend's message handling.)
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from urllib.parse import quote

POLL_INTERVAL_S = 0.25
CONFIRMATIONS = 2  # not-ready answers in a row before draining: one slow probe is no shutdown
PROBE_TIMEOUT_S = 2.0


def server_http_url(params: dict, parent_pid: int | None = None) -> str | None:
    """Where the model asks: the `server_http_url` parameter (the launcher sets it), else the parent
    tritonserver's own `--http-port` on loopback (8000 by default); None when its HTTP endpoint is off."""
    url = (params.get("server_http_url") or "").strip()
    if url:
        return url.rstrip("/")
    try:
        with open(f"/proc/{parent_pid or os.getppid()}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return None
    options = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    if options.get("allow-http", "true").lower() in ("false", "0", "no"):
        return None
    return f"http://127.0.0.1:{options.get('http-port', '8000')}"


def model_ready_probe(url: str, model_name: str, model_version: str) -> Callable[[], bool]:
    """A callable asking tritonserver over HTTP whether this model version is ready."""
    version = f"/versions/{quote(model_version)}" if model_version else ""
    endpoint = f"{url}/v2/models/{quote(model_name)}{version}/ready"

    def is_ready() -> bool:
        try:
            with urllib.request.urlopen(endpoint, timeout=PROBE_TIMEOUT_S) as r:
                return r.status == 200
        except urllib.error.HTTPError:
            return False  # 400 "Server exiting" or a model that is unloading
        # A refused or timed-out probe raises: ShutdownWatch counts it as not ready.

    return is_ready


class ShutdownWatch:
    """Polled from a thread of its own (a probe may wait); calls `on_shutdown` once, the first time the server says the
    model is no longer ready, `CONFIRMATIONS` times in a row, after having said it was (a model still
    loading is not ready either)."""

    def __init__(self, is_ready: Callable[[], bool], on_shutdown: Callable[[str], None]) -> None:
        self._is_ready = is_ready
        self._on_shutdown = on_shutdown
        self._seen_ready = False
        self._not_ready = 0
        self.fired = False

    def run(self, stop: threading.Event) -> None:
        """The watch thread's body: polls until it fires or `stop` is set."""
        while not self.fired and not stop.wait(POLL_INTERVAL_S):
            self.poll()

    def poll(self) -> None:
        if self.fired:
            return
        try:
            ready, why = bool(self._is_ready()), "tritonserver is exiting or unloading the model"
        except Exception as e:  # noqa: BLE001  a server that stopped answering is going away too
            ready, why = False, f"tritonserver stopped answering ({type(e).__name__}: {e})"
        if ready:
            self._seen_ready, self._not_ready = True, 0
            return
        self._not_ready += 1
        if self._seen_ready and self._not_ready >= CONFIRMATIONS:
            self.fired = True
            self._on_shutdown(why)
