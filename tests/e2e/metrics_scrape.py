"""Reading the server's /metrics in the e2e tests. With a Triton backend the engine's counters reach the
translator by polling (every 0.5 s), so two scrapes may hold different polls: read related samples from
one scrape, and wait until the counters hold still before taking a baseline."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx


def scrape(base_url: str, prefix: str) -> dict[str, float]:
    """Every sample of one /metrics scrape whose name starts with `prefix`, by name (labels and a
    counter's `_total` suffix dropped; the first sample of a name wins)."""
    found: dict[str, float] = {}
    for line in httpx.get(base_url + "/metrics").text.splitlines():
        if line.startswith(prefix):
            name = line.split("{", 1)[0].split(" ", 1)[0].removesuffix("_total")
            found.setdefault(name, float(line.rsplit(" ", 1)[1]))
    return found


def settled(
    base_url: str,
    prefix: str,
    ready: Callable[[dict[str, float]], bool] = lambda found: True,
    quiet_s: float = 1.5,
    timeout: float = 20.0,
) -> dict[str, float]:
    """scrape() once the samples have held still longer than the stats poll and `ready` holds of them."""
    last, since, deadline = scrape(base_url, prefix), time.monotonic(), time.monotonic() + timeout
    while time.monotonic() - since < quiet_s or not ready(last):
        assert time.monotonic() < deadline, f"the {prefix}* metrics never settled: {last}"
        time.sleep(0.1)
        now = scrape(base_url, prefix)
        if now != last:
            last, since = now, time.monotonic()
    return last
