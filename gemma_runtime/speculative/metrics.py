"""Running totals of speculation, read at scrape time (EngineStats -> server/spec_decode_metrics.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SpecDecodeCounters:
    drafted: int = 0  # draft tokens verified
    accepted: int = 0  # of which kept
    verifies: int = 0  # sequence-steps that verified at least one draft
    emitted: int = 0  # tokens those sequence-steps produced (kept drafts + one drawn each)

    def record(self, num_drafts: int, num_emitted: int) -> None:
        self.drafted += num_drafts
        self.accepted += num_emitted - 1
        self.verifies += 1
        self.emitted += num_emitted

    @property
    def mean_accepted_length(self) -> float:
        """Tokens per verifying sequence-step (1 + kept drafts); 0 before any."""
        return self.emitted / self.verifies if self.verifies else 0.0
