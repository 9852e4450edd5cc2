"""A step's token mask, built on the host from the grammar states of the rows that sample.

Called by the engine right before a step samples: at launch when every constrained row's newest token
is already resolved, otherwise (overlapped steps) once the previous step's tokens are read, while the
device still runs this step's forward. Many rows are filled in parallel by xgrammar's batch matcher.
"""

from __future__ import annotations

import xgrammar as xgr

from gemma_runtime.grammar.logits import TokenMask

_BATCH_FILL_FROM = 4  # rows: below this a plain loop beats starting the batch matcher's threads


class GrammarStep:
    def __init__(self, vocab_size: int, max_threads: int = 2):
        self.vocab_size = vocab_size
        self.batch = xgr.BatchGrammarMatcher(max_threads)

    @staticmethod
    def lags(seqs) -> bool:
        """A constrained row's newest token is still on the device: its mask must wait for it."""
        return any(s.grammar is not None and s.num_pending > 0 for s in seqs)

    def mask(self, seqs) -> TokenMask | None:
        rows = [i for i, s in enumerate(seqs) if s.grammar is not None and s.grammar.constrains_next]
        if not rows:
            return None
        # [S, ceil(V/32)] int32, all allowed: row i masks the step's logits row i
        bits = xgr.allocate_token_bitmask(len(seqs), self.vocab_size)
        states = [seqs[i].grammar for i in rows]
        if len(rows) >= _BATCH_FILL_FROM:
            self.batch.batch_fill_next_token_bitmask([g.matcher for g in states], bits, rows)
            for i, g in zip(rows, states):
                g.fill_gate(bits, i)
        else:
            for i, g in zip(rows, states):
                g.fill(bits, i)
        return TokenMask(rows, bits)
