"""The sliding pool's window edge on every slot of a page: at each step exactly the pages holding a key
some query of the step can still read are mapped, and every page wholly behind the window is given back.

A page reclaimed one token early (or late) shows here as a wrong live set on the step where the window's
first key sits on a page's last (or first) slot; windows that are not a multiple of the page size put
that edge on every slot in turn.
"""

from __future__ import annotations

import pytest

from gemma_runtime.scheduling.block_manager import NO_BLOCK, BlockManager, BlockTables

BLOCK = 4
WINDOWS = [1, 3, 4, 5, 6, 7, 8, 9, 11]


def live_pages(t: BlockTables) -> set[int]:
    return {page for page, b in enumerate(t.sliding) if b != NO_BLOCK}


def readable_pages(first_query: int, end: int, window: int) -> set[int]:
    """Pages of the keys the queries first_query..end-1 read: from first_query - window + 1 to end - 1."""
    first_key = max(0, first_query - window + 1)
    return set(range(first_key // BLOCK, (end - 1) // BLOCK + 1))


@pytest.mark.parametrize("window", WINDOWS)
def test_decode_keeps_exactly_the_window_pages(window):
    bm = BlockManager(BLOCK, 1000, 1000, window)
    t = BlockTables()
    edge_slots = set()
    for pos in range(0, 6 * BLOCK + window):
        assert bm.can_allocate(t, pos, 1)
        bm.allocate(t, pos, 1)
        edge_slots.add(max(0, pos - window + 1) % BLOCK)
        assert live_pages(t) == readable_pages(pos, pos + 1, window), f"query at {pos}"
        assert bm.sliding.num_free == 1000 - len(live_pages(t))  # reclaimed pages are back in the pool
    assert edge_slots == set(range(BLOCK))  # the window's first key sat on every slot of a page


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("chunk", [1, 2, 3, BLOCK, BLOCK + 1, 2 * BLOCK + 1])
def test_prefill_chunks_keep_what_their_first_query_reads(window, chunk):
    """A chunk's first query reads furthest back: pages behind it go, the ones it reads stay."""
    bm = BlockManager(BLOCK, 1000, 1000, window)
    t = BlockTables()
    start = 0
    while start < 7 * BLOCK:
        bm.allocate(t, start, chunk)
        assert live_pages(t) == readable_pages(start, start + chunk, window), f"chunk at {start}"
        start += chunk


@pytest.mark.parametrize("window", WINDOWS)
def test_a_pool_of_exactly_the_window_pages_never_runs_dry(window):
    """Reclaiming exactly on time lets a pool of the most pages a window can straddle decode forever:
    on the steps that cross into a new page the pool is empty, and can_allocate must count the page
    the step itself gives back."""
    pages = max(len(readable_pages(pos, pos + 1, window)) for pos in range(4 * BLOCK + window))
    bm = BlockManager(BLOCK, 1000, pages, window)
    t = BlockTables()
    for pos in range(0, 10 * BLOCK):
        assert bm.can_allocate(t, pos, 1), f"query at {pos}"
        bm.allocate(t, pos, 1)
    assert len(live_pages(t)) <= pages


@pytest.mark.parametrize("window", [3, 5, 8])
def test_tables_freed_and_grown_again_reclaim_as_before(window):
    """Preemption frees a sequence's tables and computes it again from token 0 with the same tables."""
    bm = BlockManager(BLOCK, 1000, 1000, window)
    t = BlockTables()
    for pos in range(0, 6 * BLOCK):
        bm.allocate(t, pos, 1)
    bm.free(t)
    assert bm.sliding.num_free == 1000 and bm.full.num_free == 1000
    for pos in range(0, 6 * BLOCK):
        bm.allocate(t, pos, 1)
        assert live_pages(t) == readable_pages(pos, pos + 1, window), f"query at {pos} after free"


def test_full_pages_are_never_reclaimed():
    bm = BlockManager(BLOCK, 1000, 1000, 5)
    t = BlockTables()
    for pos in range(0, 5 * BLOCK):
        bm.allocate(t, pos, 1)
    assert len(t.full) == 5 and NO_BLOCK not in t.full and bm.full.num_free == 995
