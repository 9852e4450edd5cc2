"""Prometheus counters of the prefix cache, read from `Backend.stats()` at scrape time.

The engine keeps running totals (prompt tokens looked up, tokens found); exposing them through a
collector rather than `Counter.inc` keeps the engine loop free of Prometheus and serves both backends
(the embedded engine's stats, or Triton's gauges as the translator reads them).
"""

from __future__ import annotations

from server.stats_collector import StatsCollector

COUNTERS = {
    "prefix_cache_queries": ("gemma_prefix_cache_queries", "Prompt tokens looked up in the prefix cache"),
    "prefix_cache_hits": ("gemma_prefix_cache_hits", "Prompt tokens served from the prefix cache"),
}


class PrefixCacheCollector(StatsCollector):
    counters = COUNTERS
