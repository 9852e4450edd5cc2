"""Per-step policy: which running sequences draft this step, and how many tokens each may draft.

Verifying N drafts costs a forward of N+1 query rows per sequence. At small batches a decode step is
bound by reading the weights, so the extra rows are nearly free and every accepted draft is a step
saved; at large batches the step is compute-bound and rejected drafts cost real time. Above
`speculative_max_batch` decoding sequences a step therefore drafts nothing (bench/spec_decode.py
measures the crossing; the CPU figure is no guide to a GPU's, which must be measured there).
"""

from __future__ import annotations

from gemma_runtime.speculative.grammar_drafts import grammar_can_draft

# bench/spec_decode.py on the tiny engine (CPU, 2 cores shared): a verify of 4 rows costs about as
# much as 1 row up to batch 8, and ~1.6x at batch 32 (docs/benchmarks.md). To be re-measured on a GPU.
DEFAULT_MAX_BATCH = {"cpu": 8, "cuda": 32}


def resolve_spec_max_batch(configured: int | None, device) -> int:
    if configured is not None:
        return configured
    return DEFAULT_MAX_BATCH.get(getattr(device, "type", str(device)), 8)


def is_decoding(seq) -> bool:
    """Every token but the newest is in the cache and the newest is on the host: the next step decodes."""
    return seq.num_pending == 0 and seq.num_computed == seq.num_tokens - 1


def draft_budget(seq, num_speculative_tokens: int) -> int:
    """Drafts seq may take: a verify emits up to drafts + 1 tokens, never past its length limit."""
    return max(0, min(num_speculative_tokens, seq.max_total_tokens - seq.num_tokens - 1))


def speculating(running: list, max_batch: int, num_speculative_tokens: int) -> list[tuple[object, int]]:
    """(sequence, draft budget) of the sequences that draft this step; none when the batch is too big."""
    decoding = [s for s in running if is_decoding(s)]
    if not decoding or len(decoding) > max_batch:
        return []
    out = []
    for seq in decoding:
        n = draft_budget(seq, num_speculative_tokens)
        if n > 0 and (seq.grammar is None or grammar_can_draft(seq.grammar)):
            out.append((seq, n))
    return out
