"""Drafts of a constrained sequence: cut where the grammar refuses them, and the verify rows' masks.

Only a sequence whose grammar state is in its grammar phase drafts (not while the thought-channel gate
is open or undecided: that gate has no rollback). Each check advances the xgrammar matcher over the
drafts and rolls it back by as many tokens, so the state the engine advances with the accepted tokens
is untouched.
"""

from __future__ import annotations

import xgrammar as xgr

from gemma_runtime.grammar.logits import TokenMask
from gemma_runtime.grammar.state import Phase


def grammar_can_draft(state) -> bool:
    return state.phase is Phase.GRAMMAR and not state.rejected and not state.matcher.is_terminated()


def grammar_prefix(state, drafts: list[int]) -> list[int]:
    """The longest prefix of drafts the grammar accepts (a draft that breaks it, and all after, go)."""
    matcher, n = state.matcher, 0
    for token in drafts:
        if matcher.is_terminated() or not matcher.accept_token(token):
            break
        n += 1
    if n:
        matcher.rollback(n)
    return drafts[:n]


def verify_mask(seqs: list, drafts: list[list[int]], vocab_size: int) -> TokenMask | None:
    """The token mask of a verify step's rows: sequence i owns len(drafts[i]) + 1 consecutive rows, and
    its row j is masked by its grammar after drafts[i][:j] (which the grammar accepts: grammar_prefix)."""
    num_rows = sum(len(d) + 1 for d in drafts)
    bits, rows, r = None, [], 0
    for seq, ds in zip(seqs, drafts):
        state = seq.grammar
        if state is not None and state.constrains_next:
            if bits is None:
                bits = xgr.allocate_token_bitmask(num_rows, vocab_size)  # [rows, ceil(V/32)] int32
            for j in range(len(ds) + 1):
                if not state.matcher.is_terminated():  # as constrains_next: an ended grammar masks nothing
                    state.fill(bits, r + j)
                    rows.append(r + j)
                if j < len(ds):
                    state.matcher.accept_token(ds[j])
            if ds:
                state.matcher.rollback(len(ds))
        r += len(ds) + 1
    return TokenMask(rows, bits) if bits is not None else None
