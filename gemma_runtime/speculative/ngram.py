"""Prompt-lookup drafting: the tokens that followed the latest earlier occurrence of the sequence's last
n tokens (n from max_n down to min_n) are proposed as its continuation. No model, no device work:
useful where outputs copy their input (code edits, retrieval, quoting). Drafts are deterministic, so
they carry no probabilities (one-hot for the rejection rule)."""

from __future__ import annotations

import numpy as np

from gemma_runtime.speculative.protocol import Draft, DraftRequest


class NgramDrafter:
    def __init__(self, min_n: int = 1, max_n: int = 4, lookback: int = 8192):
        """lookback bounds the host cost per sequence: only the last `lookback` tokens are searched."""
        self.min_n, self.max_n, self.lookback = min_n, max_n, lookback

    def propose(self, requests: list[DraftRequest]) -> list[Draft]:
        return [Draft(self.lookup(r.token_ids, r.max_tokens)) for r in requests]

    def release(self, request_id: str) -> None:
        pass  # nothing is kept per sequence

    def lookup(self, token_ids: list[int], k: int) -> list[int]:
        tokens = np.asarray(token_ids[-self.lookback :], dtype=np.int64)
        length = tokens.shape[0]
        for n in range(min(self.max_n, length - 1), self.min_n - 1, -1):
            # every earlier window of n tokens that ends before the last token: [length - n, n]
            windows = np.lib.stride_tricks.sliding_window_view(tokens[:-1], n)
            hits = np.flatnonzero((windows == tokens[-n:]).all(axis=1))
            if hits.size:
                start = int(hits[-1]) + n  # the latest match: what followed it is the proposal
                return tokens[start : start + k].tolist()
        return []
