"""Prometheus counters of the prefix cache, read from `Backend.stats()` at scrape time.

The engine keeps running totals (prompt tokens looked up, tokens found); exposing them through a
collector rather than `Counter.inc` keeps the engine loop free of Prometheus and serves both backends
(the embedded engine's stats, or Triton's gauges as the translator reads them).
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

COUNTERS = {
    "prefix_cache_queries": ("gemma_prefix_cache_queries", "Prompt tokens looked up in the prefix cache"),
    "prefix_cache_hits": ("gemma_prefix_cache_hits", "Prompt tokens served from the prefix cache"),
}


class PrefixCacheCollector(Collector):
    def __init__(self, backend, model_name: str) -> None:
        self._backend = backend
        self._model_name = model_name

    def collect(self):
        try:
            stats = self._backend.stats()
        except Exception:  # a scrape must not fail because the engine is starting or gone
            return
        for field, (name, doc) in COUNTERS.items():
            family = CounterMetricFamily(name, doc, labels=["model_name"])
            family.add_metric([self._model_name], float(getattr(stats, field, 0)))
            yield family
