"""The prefix cache's bookkeeping: page pool with counts and LRU, hash chains, the two geometries' rule."""

from __future__ import annotations

from gemma_runtime.api import SamplingParams
from gemma_runtime.scheduling.block_manager import NO_BLOCK, BlockManager
from gemma_runtime.scheduling.prefix_cache import CachingBlockPool, page_hashes
from gemma_runtime.scheduling.scheduler import Scheduler
from gemma_runtime.scheduling.sequence import ImageSpan, Sequence

BS, WINDOW = 4, 8


def manager(full: int = 64, sliding: int = 64) -> BlockManager:
    return BlockManager(BS, full, sliding, WINDOW, pool=CachingBlockPool)


def seq(rid: str, tokens: list[int]) -> Sequence:
    return Sequence(rid, list(tokens), SamplingParams(max_tokens=4), frozenset())


def run_prefill(sched: Scheduler, s: Sequence) -> None:
    """Schedules s until its prompt is computed, as the engine does (num_computed moves on)."""
    sched.add(s)
    while s.num_computed < s.num_tokens:
        for item in sched.schedule().scheduled:
            item.seq.num_computed += item.num_new


def test_pool_hands_out_free_pages_before_evicting_the_oldest_cached():
    pool = CachingBlockPool(3)
    a, b, c = pool.take(), pool.take(), pool.take()
    pool.publish(a, b"A")
    pool.publish(b, b"B")
    pool.give_back(b)  # cached first: evicted first
    pool.give_back(a)
    pool.give_back(c)  # never named: plainly free
    assert pool.num_free == 3 and pool.num_cached == 2
    assert pool.take() == c
    assert pool.take() == b and b"B" not in pool.by_hash  # LRU: b was cached before a
    assert pool.share(b"A") == a and pool.refs[a] == 1
    assert pool.num_free == 0


def test_shared_page_is_freed_by_its_last_owner_only():
    pool = CachingBlockPool(2)
    a = pool.take()
    pool.publish(a, b"A")
    assert pool.share(b"A") == a and pool.refs[a] == 2
    assert not pool.frees_on_give_back(a)
    pool.give_back(a)
    assert pool.num_free == 1 and pool.frees_on_give_back(a)
    pool.give_back(a)
    assert pool.num_free == 2 and pool.num_cached == 1


def test_hash_chain_covers_the_whole_prefix_and_the_images():
    tokens = list(range(100, 124))
    base = page_hashes(tokens, BS, [], [], [])
    assert len(base) == 6
    changed = page_hashes(tokens[:5] + [999] + tokens[6:], BS, [], [], [])
    assert changed[0] == base[0] and all(x != y for x, y in zip(changed[1:], base[1:]))
    span = [ImageSpan(9, 15)]
    one, other = page_hashes(tokens, BS, span, [b"i1"], []), page_hashes(tokens, BS, span, [b"i2"], [])
    assert one[:2] == other[:2] and all(x != y for x, y in zip(one[2:], other[2:]))
    assert page_hashes(tokens[2 * BS :], BS, [], [], base[:2]) == base  # extends a chain already started
    assert page_hashes(tokens[2 * BS :], BS, span, [b"i1"], one[:2]) == one


def test_a_finished_prompt_is_found_in_both_geometries():
    blocks = manager()
    sched = Scheduler(blocks, max_num_seqs=4, max_num_batched_tokens=64)
    prompt = list(range(100, 130))  # 30 tokens: 7 full pages
    first = seq("a", prompt)
    run_prefill(sched, first)
    sched.remove(first)
    free = blocks.num_free
    assert free == blocks.num_total  # everything free or evictable
    second = seq("b", prompt + [7, 8, 9])
    sched.add(second)
    sched.schedule()
    assert second.num_cached_tokens == 28 and second.num_computed == 28
    t = second.block_tables
    # full layers map all 7 cached pages; sliding layers only those a query at token 28 can read
    assert len(t.full) >= 7 and t.sliding_reclaimed == (28 - WINDOW + 1) // BS
    assert all(b == NO_BLOCK for b in t.sliding[: t.sliding_reclaimed])
    assert blocks.full.refs[t.full[0]] == 1


def test_sliding_layers_need_the_last_window_cached():
    """Evicting a sliding page inside the window in front of the cached prefix shortens the hit."""
    blocks = manager()
    sched = Scheduler(blocks, max_num_seqs=4, max_num_batched_tokens=64)
    prompt = list(range(200, 230))
    first = seq("a", prompt)
    run_prefill(sched, first)
    hashes = list(first.page_hashes)
    sched.remove(first)
    victim = blocks.sliding.by_hash[hashes[5]]  # page 5 covers tokens 20..23, inside the window of token 28
    blocks.sliding._evictable.pop(victim)
    del blocks.sliding.by_hash[blocks.sliding.hash_of.pop(victim)]
    blocks.sliding._free.append(victim)
    second = seq("b", prompt + [1])
    sched.add(second)
    sched.schedule()
    # 7 pages would need sliding pages 5 and 6 (the first a query at token 28 reads is 5), 6 pages
    # need 4 and 5, 5 pages need 3 and 4, which are cached
    assert second.num_cached_tokens == 5 * BS


def test_a_cached_prefix_never_ends_inside_an_image():
    blocks = manager()
    sched = Scheduler(blocks, max_num_seqs=4, max_num_batched_tokens=64)
    prompt = list(range(300, 330))
    span = [ImageSpan(10, 26)]
    first = seq("a", prompt)
    first.image_spans, first.image_hashes = span, [b"img"]
    run_prefill(sched, first)
    sched.remove(first)
    second = seq("b", prompt[:27] + [5])  # would reuse 6 pages (24 tokens), ending inside the image
    second.image_spans, second.image_hashes = span, [b"img"]
    sched.add(second)
    sched.schedule()
    assert second.num_cached_tokens == 8  # back to the page before the image starts
