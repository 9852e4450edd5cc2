"""Per-request state inside the engine."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from gemma_runtime.api import SamplingParams
from gemma_runtime.scheduling.block_manager import BlockTables


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class ImageSpan:
    """One image's run of placeholder tokens in the prompt: [start, end) token indices."""

    start: int
    end: int


@dataclass
class Sequence:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    stop_token_ids: frozenset[int]
    images: list = field(default_factory=list)  # PreprocessedImage, encoded on first prefill
    image_spans: list[ImageSpan] = field(default_factory=list)
    output_token_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed: int = 0  # tokens whose K/V are in the cache
    # Sampled on the device but not yet read on the host (overlapped steps): counted in num_tokens, absent
    # from output_token_ids. The model runner feeds such a token to the next step straight from the device.
    num_pending: int = 0
    max_total_tokens: int = 1 << 62  # prompt + max_tokens, capped by the engine's max_model_len
    block_tables: BlockTables = field(default_factory=BlockTables)
    image_embeds: torch.Tensor | None = None  # [num image tokens, H], kept across preemption
    generator: torch.Generator | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    num_preemptions: int = 0
    grammar: object | None = None  # GrammarState (gemma_runtime/grammar) of a constrained request
    # prefix caching (scheduling/prefix_cache.py): the images' content hashes, the hash chain over full pages, how
    # many of this sequence's pages are named in the cache, and the prompt tokens its first admission found
    image_hashes: list[bytes] = field(default_factory=list)
    page_hashes: list[bytes] = field(default_factory=list)
    pages_published: int = 0
    num_cached_tokens: int | None = None
    # speculative decoding (gemma_runtime/speculative/): this step's drafts after the newest token, verified
    # in the same forward, and their draft distributions [n, V] when the drafter sampled them
    draft_token_ids: list[int] = field(default_factory=list)
    draft_probs: torch.Tensor | None = None

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def tokens(self, lo: int, hi: int) -> list[int]:
        """token_ids[lo:hi] without copying the whole sequence (a decode step reads one token of it).
        Only resolved tokens: hi <= num_resolved_tokens."""
        n = len(self.prompt_token_ids)
        if hi <= n:
            return self.prompt_token_ids[lo:hi]
        if lo >= n:
            return self.output_token_ids[lo - n : hi - n]
        return self.prompt_token_ids[lo:] + self.output_token_ids[: hi - n]

    @property
    def num_tokens(self) -> int:
        """Tokens the sequence has, pending ones included: what the scheduler and the KV pages count."""
        return len(self.prompt_token_ids) + len(self.output_token_ids) + self.num_pending

    @property
    def num_resolved_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def finishes_when_resolved(self) -> bool:
        """A pending token takes the sequence to its length limit: scheduling it again would be wasted."""
        return self.num_pending > 0 and self.num_tokens >= self.max_total_tokens

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED
