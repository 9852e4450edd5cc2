"""What the engine calls for speculative decoding: one object, three hooks.

`draft` (before scheduling): the policy picks the decoding sequences that speculate this step, the
drafter proposes, drafts a grammar refuses are cut, and each sequence's `draft_token_ids` are set for
the scheduler (which may cut them further to fit the token budget and the KV pages). `verified` (after
the step's tokens are read): the kept drafts' KV stays, the rejected ones' slots are rolled back (their
pages returned) and the counters move. `release`: the sequence is gone or preempted.
"""

from __future__ import annotations

from gemma_runtime.speculative.grammar_drafts import grammar_prefix
from gemma_runtime.speculative.metrics import SpecDecodeCounters
from gemma_runtime.speculative.policy import speculating
from gemma_runtime.speculative.protocol import DraftRequest


class Speculation:
    def __init__(self, drafter, num_speculative_tokens: int, max_batch: int):
        self.drafter = drafter
        self.num_tokens = num_speculative_tokens
        self.max_batch = max_batch
        self.counters = SpecDecodeCounters()

    def draft(self, running: list, hidden_of) -> None:
        """hidden_of(seq): the target's stored hidden state for the sequence (protocol.py), or None."""
        for seq in running:
            seq.draft_token_ids, seq.draft_probs = [], None
        chosen = speculating(running, self.max_batch, self.num_tokens)
        if not chosen:
            return
        requests = [
            DraftRequest(
                seq.request_id, seq.token_ids, seq.num_tokens - 1, n, hidden_of(seq), seq.block_tables, seq.sampling
            )
            for seq, n in chosen
        ]
        for (seq, n), draft in zip(chosen, self.drafter.propose(requests)):
            ids = list(draft.token_ids[:n])
            if seq.grammar is not None:
                ids = grammar_prefix(seq.grammar, ids)
            seq.draft_token_ids = ids
            # a greedy request keeps exactly the target's argmax: the draft's law does not matter there
            if draft.probs is not None and ids and not seq.sampling.is_greedy:
                seq.draft_probs = draft.probs[: len(ids)]

    def verified(self, seq, blocks, num_drafts: int, num_emitted: int) -> None:
        """seq verified num_drafts drafts and emits num_emitted tokens (kept drafts + one drawn): the KV
        of the newest token and the kept drafts stays, the slots past them are rolled back."""
        seq.num_computed += num_emitted - 1
        blocks.trim(seq.block_tables, seq.num_computed)
        seq.draft_token_ids, seq.draft_probs = [], None
        self.counters.record(num_drafts, num_emitted)

    def release(self, seq) -> None:
        seq.draft_token_ids, seq.draft_probs = [], None
        self.drafter.release(seq.request_id)
