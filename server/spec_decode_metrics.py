"""Prometheus metrics of speculative decoding, read from `Backend.stats()` at scrape time (as the prefix
cache's): drafted and accepted token counters and the mean accepted length (tokens emitted per
sequence-step that verified drafts: 1 + kept drafts), for both backends."""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily

from server.stats_collector import StatsCollector

COUNTERS = {
    "spec_decode_drafted": ("gemma_spec_decode_drafted_tokens", "Draft tokens verified by the target"),
    "spec_decode_accepted": ("gemma_spec_decode_accepted_tokens", "Draft tokens the target kept"),
    "spec_decode_verifies": ("gemma_spec_decode_verifies", "Sequence-steps that verified drafts"),
}
MEAN_LENGTH = ("gemma_spec_decode_mean_accepted_length", "Tokens per verifying sequence-step (1 + kept drafts)")


class SpecDecodeCollector(StatsCollector):
    counters = COUNTERS

    def derived(self, stats):
        verifies = getattr(stats, "spec_decode_verifies", 0)
        mean = getattr(stats, "spec_decode_emitted", 0) / verifies if verifies else 0.0
        gauge = GaugeMetricFamily(*MEAN_LENGTH, labels=["model_name"])
        gauge.add_metric([self._model_name], mean)
        yield gauge
