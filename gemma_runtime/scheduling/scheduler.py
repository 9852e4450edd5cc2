"""Token-budget scheduler with chunked prefill and preemption by recomputation.

Every step: running sequences first (one token each when decoding, the next chunk when a prompt is
still being prefilled), then waiting ones while the token budget, the sequence cap and the KV pages
allow. When pages run out, the most recently admitted running sequence is preempted: its pages are
freed and it returns to the front of the queue, to be prefilled again (prompt + what it generated).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from gemma_runtime.scheduling.block_manager import BlockManager
from gemma_runtime.scheduling.prefix_cache import PrefixCache
from gemma_runtime.scheduling.sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class ScheduledSeq:
    seq: Sequence
    num_new: int  # tokens computed this step, starting at seq.num_computed
    num_draft: int = 0  # speculative drafts verified after them (seq.draft_token_ids[:num_draft])

    @property
    def completes_prompt(self) -> bool:
        """True when this step reaches the end of the known tokens, so a next token is sampled."""
        return self.seq.num_computed + self.num_new == self.seq.num_tokens


@dataclass(frozen=True)
class SchedulerOutput:
    scheduled: list[ScheduledSeq]
    preempted: list[Sequence]

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.blocks = block_manager
        self.max_num_seqs = max_num_seqs
        self.budget = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.prefix = PrefixCache(block_manager) if block_manager.prefix_caching else None

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Drops a finished or aborted sequence and gives its pages back."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._publish(seq)
        self.blocks.free(seq.block_tables)

    def _publish(self, seq: Sequence) -> None:
        """Prefix caching: names the pages seq has completely computed, before they are freed or reclaimed."""
        if self.prefix is not None:
            self.prefix.publish(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _chunk(self, seq: Sequence, budget: int) -> int:
        """How many of seq's uncomputed tokens to take, never ending inside an image's span (its tokens
        attend to each other, so they are computed in one step)."""
        start = seq.num_computed
        end = min(seq.num_tokens, start + budget)
        for span in seq.image_spans:
            if span.start < end < span.end:
                end = span.start if span.start > start else span.end
                break
        return end - start

    def schedule(self) -> SchedulerOutput:
        budget = self.budget
        scheduled: list[ScheduledSeq] = []
        preempted: list[Sequence] = []

        # Running sequences, oldest first; preempt from the newest end when pages run out.
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if seq.finishes_when_resolved:  # its last token is still on the device; it ends when read
                i += 1
                continue
            self._publish(seq)
            num_new = self._chunk(seq, budget)
            num_new_total = num_new + self._fit_drafts(seq, num_new, budget)
            while not self.blocks.can_allocate(seq.block_tables, seq.num_computed, num_new_total):
                victim = self.running[-1]
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            else:
                self.blocks.allocate(seq.block_tables, seq.num_computed, num_new_total)
                scheduled.append(ScheduledSeq(seq, num_new, num_new_total - num_new))
                budget -= num_new_total
                i += 1
                continue
            break  # seq itself was preempted

        # Waiting sequences in arrival order (preempted ones were put back in front).
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs and not preempted:
            seq = self.waiting[0]
            if seq.finishes_when_resolved:
                break
            if self.prefix is not None:
                self.prefix.admit(seq)  # starts seq after its cached prefix, those pages mapped
            num_new = self._chunk(seq, budget)
            if num_new == 0 or not self.blocks.can_allocate(seq.block_tables, seq.num_computed, num_new):
                if seq.num_computed:  # give the mapped prefix back: it stays cached for the next try
                    self.blocks.free(seq.block_tables)
                    seq.num_computed = 0
                break
            if self.prefix is not None:
                self.prefix.count(seq)
            self.waiting.popleft()
            self.blocks.allocate(seq.block_tables, seq.num_computed, num_new)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            scheduled.append(ScheduledSeq(seq, num_new))
            budget -= num_new
        return SchedulerOutput(scheduled, preempted)

    def _fit_drafts(self, seq: Sequence, num_new: int, budget: int) -> int:
        """How many of seq's drafts this step verifies: only after its one decode token, within the token
        budget, and none when their pages would cost a preemption (drafts are cut, never waited for)."""
        drafts = seq.draft_token_ids
        n = min(len(drafts), budget - num_new) if num_new == 1 and seq.num_computed + 1 == seq.num_tokens else 0
        if n and not self.blocks.can_allocate(seq.block_tables, seq.num_computed, num_new + n):
            n = 0
        del drafts[n:]
        if seq.draft_probs is not None:
            seq.draft_probs = seq.draft_probs[:n] if n else None
        return n

    def _preempt(self, seq: Sequence) -> None:
        seq.draft_token_ids, seq.draft_probs = [], None
        self.running.remove(seq)
        self._publish(seq)
        self.blocks.free(seq.block_tables)
        seq.num_computed = 0
        seq.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
