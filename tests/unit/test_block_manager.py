from gemma_runtime.scheduling.block_manager import NO_BLOCK, BlockManager, BlockTables


def manager(full=100, sliding=100, window=8, block=4) -> BlockManager:
    return BlockManager(block, full, sliding, window)


def test_full_pages_grow_with_the_sequence():
    bm = manager()
    t = BlockTables()
    bm.allocate(t, 0, 10)
    assert len(t.full) == 3  # ceil(10 / 4)
    bm.allocate(t, 10, 1)
    assert len(t.full) == 3
    bm.allocate(t, 12, 1)
    assert len(t.full) == 4
    assert len(set(t.full)) == 4


def test_sliding_pages_behind_the_window_are_reclaimed():
    bm = manager(window=8, block=4)
    t = BlockTables()
    bm.allocate(t, 0, 8)
    assert all(b != NO_BLOCK for b in t.sliding)
    free_before = bm.sliding.num_free
    # A query at position 20 reads keys 13..20: pages 0..2 (tokens 0..11) are dead.
    bm.allocate(t, 20, 1)
    assert t.sliding[:3] == [NO_BLOCK] * 3
    live = [b for b in t.sliding if b != NO_BLOCK]
    assert len(live) == 3  # pages 3, 4, 5 cover tokens 12..23
    assert bm.sliding.num_free == free_before + 2 - 3  # pages 0 and 1 given back, pages 3..5 taken
    bm.free(t)
    assert bm.sliding.num_free == 100 and bm.full.num_free == 100


def test_sliding_memory_is_bounded_for_long_sequences():
    bm = manager(full=1000, sliding=1000, window=8, block=4)
    t = BlockTables()
    bm.allocate(t, 0, 1)
    for pos in range(1, 2000):
        bm.allocate(t, pos, 1)
        assert sum(b != NO_BLOCK for b in t.sliding) <= 8 // 4 + 1
    assert len(t.full) == 500


def test_can_allocate_counts_reclaimable_pages():
    bm = manager(full=100, sliding=3, window=8, block=4)
    t = BlockTables()
    bm.allocate(t, 0, 12)  # pages 0..2, all three sliding pages in use
    assert bm.sliding.num_free == 0
    # Tokens 12..16 start at 12, which still reads keys 5..12 (pages 1..3): only page 0 can go,
    # and pages 3 and 4 are needed.
    assert not bm.can_allocate(t, 12, 5)
    # A query at 16 reads keys 9..16: pages 0 and 1 can go, pages 3 and 4 are needed.
    assert bm.can_allocate(t, 16, 1)
    bm.allocate(t, 16, 1)
    assert t.sliding[:2] == [NO_BLOCK, NO_BLOCK] and bm.sliding.num_free == 0


def test_refuses_when_full_pages_run_out():
    bm = manager(full=2, sliding=100)
    t = BlockTables()
    assert bm.can_allocate(t, 0, 8)
    assert not bm.can_allocate(t, 0, 9)
