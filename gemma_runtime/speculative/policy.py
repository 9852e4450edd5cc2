"""Per-step policy: which running sequences draft this step, and how many tokens each may draft.

Verifying N drafts costs a forward of N+1 query rows per sequence. At small batches a decode step is
bound by reading the weights, so the extra rows are nearly free and every accepted draft is a step
saved; at large batches the step is compute-bound and rejected drafts cost real time. Above
`speculative_max_batch` decoding sequences a step therefore drafts nothing (bench/spec_decode.py
measures the crossing; the CPU figure is no guide to a GPU's, which must be measured there).
"""

from __future__ import annotations

from gemma_runtime.speculative.grammar_drafts import grammar_can_draft

# bench/spec_decode.py --dry-run (tiny engine, CPU, 2 shared cores, N=3): (draft + verify) / plain step
# cost 1.15x at batch 1, 1.22x at 8, 1.35x at 32, so speculation pays from a mean accepted length of
# 1.15 / 1.22 / 1.35; ngram accepted 1.6-1.8 on the tests' repetitive prompts. 32 is the largest batch
# measured where that holds; beyond it nothing was measured, so drafting stops. The GPU's crossing must
# be measured on a GPU (`make bench BENCH_ARGS="--speculative ngram"`); 32 stands there until then.
DEFAULT_MAX_BATCH = {"cpu": 32, "cuda": 32}


def resolve_spec_max_batch(configured: int | None, device) -> int:
    if configured is not None:
        return configured
    return DEFAULT_MAX_BATCH.get(getattr(device, "type", str(device)), 32)


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
