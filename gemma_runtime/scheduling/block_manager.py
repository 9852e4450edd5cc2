"""Paged KV bookkeeping for Gemma 4's two cache geometries. Pure Python: no tensors here.

Full-attention layers keep every page of a sequence. Sliding layers only ever read the last
`window` keys, so the pages that fall entirely behind the window are given back as the sequence grows.
Both pools count blocks of the same size; a sequence holds one block table per pool.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

NO_BLOCK = -1


@dataclass
class BlockTables:
    full: list[int] = field(default_factory=list)
    sliding: list[int] = field(default_factory=list)  # NO_BLOCK where a page was reclaimed
    sliding_reclaimed: int = 0  # pages before this index are all reclaimed: scans start here, not at 0
    generation: int = 0  # bumped by every free(): a copy of the tables (the device mirror) starts over
    # the fewest pages trim() left since the device mirror last read the tables (None: not trimmed): the
    # mirror rewrites its entries from there
    trimmed_to: int | None = None


class BlockPool:
    caching = False  # pages are never shared nor kept

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def take(self) -> int:
        return self._free.popleft()

    def give_back(self, block: int) -> None:
        self._free.append(block)

    def frees_on_give_back(self, block: int) -> bool:
        """Whether giving this block back makes it free (a shared page stays with its other owners)."""
        return True


class BlockManager:
    def __init__(
        self,
        block_size: int,
        num_full_blocks: int,
        num_sliding_blocks: int,
        sliding_window: int,
        has_full: bool = True,
        has_sliding: bool = True,
        pool: type[BlockPool] | None = None,
    ):
        """pool: the page pool class of both geometries; prefix_cache.CachingBlockPool shares pages
        between sequences and keeps them after they end."""
        self.block_size = block_size
        self.window = sliding_window
        pool = pool or BlockPool
        self.prefix_caching = pool.caching
        self.full = pool(num_full_blocks if has_full else 0)
        self.sliding = pool(num_sliding_blocks if has_sliding else 0)
        self.has_full = has_full
        self.has_sliding = has_sliding

    # --- sizes ----------------------------------------------------------------------------------

    def _pages(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _first_live_page(self, first_query_pos: int) -> int:
        """The first sliding page a query at `first_query_pos` (or later) can still read."""
        return max(0, first_query_pos - self.window + 1) // self.block_size

    def _needs(self, tables: BlockTables, num_computed: int, num_new: int) -> tuple[int, int]:
        """New pages (full, sliding) that computing tokens [num_computed, num_computed + num_new) takes."""
        end = self._pages(num_computed + num_new)
        full = max(0, end - len(tables.full)) if self.has_full else 0
        sliding = 0
        if self.has_sliding:
            first = self._first_live_page(num_computed)
            sliding = sum(
                1 for page in range(first, end) if page >= len(tables.sliding) or tables.sliding[page] == NO_BLOCK
            )
        return full, sliding

    def max_pages_per_sequence(self, max_model_len: int) -> tuple[int, int]:
        return self._pages(max_model_len), self._pages(self.window) + 1

    # --- operations -----------------------------------------------------------------------------

    def can_allocate(self, tables: BlockTables, num_computed: int, num_new: int) -> bool:
        full, sliding = self._needs(tables, num_computed, num_new)
        reclaimable = self.reclaimable_sliding(tables, num_computed)
        return full <= self.full.num_free and sliding <= self.sliding.num_free + reclaimable

    def reclaimable_sliding(self, tables: BlockTables, num_computed: int) -> int:
        first = self._first_live_page(num_computed)
        return sum(
            1
            for b in tables.sliding[tables.sliding_reclaimed : first]
            if b != NO_BLOCK and self.sliding.frees_on_give_back(b)
        )

    def allocate(self, tables: BlockTables, num_computed: int, num_new: int) -> None:
        """Reclaims sliding pages behind the window, then maps every page the new tokens touch."""
        end = self._pages(num_computed + num_new)
        if self.has_sliding:
            first = self._first_live_page(num_computed)
            for page in range(tables.sliding_reclaimed, min(first, len(tables.sliding))):
                if tables.sliding[page] != NO_BLOCK:
                    self.sliding.give_back(tables.sliding[page])
                    tables.sliding[page] = NO_BLOCK
            tables.sliding_reclaimed = max(tables.sliding_reclaimed, min(first, len(tables.sliding)))
            while len(tables.sliding) < end:
                tables.sliding.append(NO_BLOCK)
            for page in range(first, end):
                if tables.sliding[page] == NO_BLOCK:
                    tables.sliding[page] = self.sliding.take()
        if self.has_full:
            while len(tables.full) < end:
                tables.full.append(self.full.take())

    def trim(self, tables: BlockTables, num_tokens: int) -> None:
        """Gives back the pages past the first num_tokens tokens (rejected drafts' slots): the tables keep
        exactly what a sequence of num_tokens computed tokens holds. Pages only go from the end, and
        `trimmed_to` tells the device mirror (executor/device_block_tables.py) to resend from there."""
        keep = self._pages(num_tokens)
        if len(tables.full) > keep or len(tables.sliding) > keep:
            tables.trimmed_to = keep if tables.trimmed_to is None else min(tables.trimmed_to, keep)
        while len(tables.full) > keep:
            self.full.give_back(tables.full.pop())
        while len(tables.sliding) > keep:
            block = tables.sliding.pop()
            if block != NO_BLOCK:
                self.sliding.give_back(block)

    def free(self, tables: BlockTables) -> None:
        # last page first: with prefix caching the LRU then evicts a prefix's tail before its head
        for b in reversed(tables.full):
            self.full.give_back(b)
        for b in reversed(tables.sliding):
            if b != NO_BLOCK:
                self.sliding.give_back(b)
        tables.full.clear()
        tables.sliding.clear()
        tables.sliding_reclaimed = 0
        tables.generation += 1

    @property
    def num_free(self) -> int:
        return self.full.num_free + self.sliding.num_free

    @property
    def num_total(self) -> int:
        return self.full.num_blocks + self.sliding.num_blocks
