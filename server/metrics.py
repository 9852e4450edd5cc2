"""Prometheus metrics: request counts by status, TTFT / ITL / end-to-end histograms, engine gauges.

Each app owns its own CollectorRegistry, so several servers (tests) can live in one process. The
engine gauges are read from `Backend.stats()` at scrape time rather than pushed by the engine loop.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from server.prefix_cache_metrics import PrefixCacheCollector
from server.spec_decode_metrics import SpecDecodeCollector

_LATENCY_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_ITL_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    def __init__(self, backend, model_name: str) -> None:
        self.registry = CollectorRegistry()
        self._backend = backend
        labels = {"model_name": model_name}
        self.requests = Counter(
            "gemma_requests",
            "Finished HTTP requests by endpoint and status code",
            ["model_name", "endpoint", "status"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "gemma_time_to_first_token_seconds",
            "Time to first token",
            ["model_name"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        ).labels(**labels)
        self.itl = Histogram(
            "gemma_inter_token_latency_seconds",
            "Time between successive outputs of a request",
            ["model_name"],
            buckets=_ITL_BUCKETS,
            registry=self.registry,
        ).labels(**labels)
        self.e2e = Histogram(
            "gemma_e2e_request_latency_seconds",
            "End-to-end request latency",
            ["model_name"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        ).labels(**labels)
        self.prompt_tokens = Counter(
            "gemma_prompt_tokens", "Prompt tokens processed", ["model_name"], registry=self.registry
        ).labels(**labels)
        self.generation_tokens = Counter(
            "gemma_generation_tokens", "Tokens generated", ["model_name"], registry=self.registry
        ).labels(**labels)
        running = Gauge(
            "gemma_num_requests_running", "Requests the engine is running", ["model_name"], registry=self.registry
        )
        waiting = Gauge(
            "gemma_num_requests_waiting", "Requests waiting for the engine", ["model_name"], registry=self.registry
        )
        # cached pages no request holds count as free: they are evicted on demand
        kv = Gauge(
            "gemma_kv_cache_usage_perc",
            "Fraction of KV cache blocks in use (0 to 1)",
            ["model_name"],
            registry=self.registry,
        )
        running.labels(**labels).set_function(lambda: self._stat("num_running"))
        waiting.labels(**labels).set_function(lambda: self._stat("num_waiting"))
        kv.labels(**labels).set_function(lambda: self._stat("kv_usage"))
        self._model_name = model_name
        self.registry.register(PrefixCacheCollector(backend, model_name))
        self.registry.register(SpecDecodeCollector(backend, model_name))

    def _stat(self, name: str) -> float:
        try:
            return float(getattr(self._backend.stats(), name))
        except Exception:  # a scrape must not fail because the engine is starting or gone
            return float("nan")

    def count(self, endpoint: str, status: int) -> None:
        self.requests.labels(model_name=self._model_name, endpoint=endpoint, status=str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """Per-request latency bookkeeping: call `output(n_tokens)` for each runtime output, then `done()`."""

    def __init__(self, metrics: ServerMetrics | None) -> None:
        self._m = metrics
        self.start = time.perf_counter()
        self._last: float | None = None

    def output(self, num_tokens: int) -> None:
        if self._m is None or num_tokens == 0:
            return
        now = time.perf_counter()
        if self._last is None:
            self._m.ttft.observe(now - self.start)
        else:
            self._m.itl.observe(now - self._last)
        self._last = now
        self._m.generation_tokens.inc(num_tokens)

    def done(self, prompt_tokens: int = 0) -> None:
        if self._m is None:
            return
        self._m.e2e.observe(time.perf_counter() - self.start)
        self._m.prompt_tokens.inc(prompt_tokens)
