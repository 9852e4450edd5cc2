"""A verify step's rows: a speculating sequence samples at its newest token and after each of its
drafts (len(drafts) + 1 consecutive rows), every row with the drafts before it as history; its tokens
are then the run of drafts equal to the samples plus one (speculative/verify.py).

A plain sequence is the case of no drafts: one row, one token, so the runner treats both alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gemma_runtime.executor.sampler import SamplingInput
from gemma_runtime.speculative.rejection import RejectionGroup
from gemma_runtime.speculative.verify import accepted_run


@dataclass(frozen=True)
class Verified:
    seq: object  # Sequence
    num_drafts: int
    num_emitted: int  # kept drafts + the token drawn after them


def sampling_rows(seqs: list, drafts: list[list[int]]) -> list[SamplingInput]:
    rows = []
    for seq, ds in zip(seqs, drafts):
        for j in range(len(ds) + 1):
            history = seq.output_token_ids + ds[:j] if j else seq.output_token_ids  # penalties count drafts too
            rows.append(SamplingInput(seq.sampling, history, seq.generator))
    return rows


def rejection_groups(seqs: list, drafts: list[list[int]], default: torch.Generator) -> list[RejectionGroup]:
    """Sampled sequences whose drafts carry probabilities: rejection-sampled (speculative/rejection.py).
    Deterministic drafts need no group: drawing each row and keeping equal drafts is the same law."""
    groups, row = [], 0
    for seq, ds in zip(seqs, drafts):
        if ds and seq.draft_probs is not None and not seq.sampling.is_greedy:
            groups.append(RejectionGroup(row, ds, seq.draft_probs, seq.generator or default))
        row += len(ds) + 1
    return groups


def split_runs(seqs: list, drafts: list[list[int]], tokens: list[int], logprobs: list):
    """Per sequence, in row order: (seq, its drafts, emitted tokens, their logprobs, the row of the last)."""
    row = 0
    for seq, ds in zip(seqs, drafts):
        run = accepted_run(tokens[row : row + len(ds) + 1], ds)
        yield seq, ds, run, logprobs[row : row + len(run)], row + len(run) - 1
        row += len(ds) + 1
