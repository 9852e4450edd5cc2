"""A Prometheus collector over `Backend.stats()`, read at scrape time: the engine keeps running totals and
never touches Prometheus, and both backends (the embedded engine's stats, or Triton's as the translator
reads them) serve the same families. Subclasses name their counters and may derive gauges from them."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class StatsCollector(Collector):
    counters: dict[str, tuple[str, str]] = {}  # stats field -> (metric name, help)

    def __init__(self, backend, model_name: str) -> None:
        self._backend = backend
        self._model_name = model_name

    def collect(self):
        try:
            stats = self._backend.stats()
        except Exception:  # a scrape must not fail because the engine is starting or gone
            return
        for field, (name, doc) in self.counters.items():
            family = CounterMetricFamily(name, doc, labels=["model_name"])
            family.add_metric([self._model_name], float(getattr(stats, field, 0)))
            yield family
        yield from self.derived(stats)

    def derived(self, stats):
        """Families computed from the counters (none by default)."""
        return ()
