"""Automatic prefix caching over both KV geometries. Pure Python: no tensors here.

A full page (block_size tokens) is named by a hash chain: its hash covers the previous page's hash,
its token ids and, for image soft tokens (all the same placeholder id), the image's content hash and
where the image starts. Two sequences whose pages have equal hashes computed equal K/V, so a page is
shared read-only between them, with a reference count.

`CachingBlockPool` replaces `BlockPool` in each geometry: a page whose count drops to zero keeps its
hash and goes to an LRU list of evictable pages; `take()` hands out never-hashed free pages first and
evicts the least recently used cached page only when none is left, so allocation always evicts
before the scheduler preempts (evictable pages count as free).

`PrefixCache` matches a new sequence's hash chain against both pools:
- full-attention layers need every page of the reused prefix;
- sliding layers only read the last `window` keys, so a prefix of k pages is usable on them when the
  sliding pages covering the window in front of token k * block_size are cached.
It takes the longest k that satisfies both, never covers the last known token (its logits must be
computed) and never ends inside an image's span (an image's tokens are computed in one step).

What pages outlive their sequence: every full page that was completely computed, and every sliding
page that was completely computed, both on the pages still mapped when the sequence ends (its last
window) and the pages reclaimed behind the window while it ran. All of them become evictable (LRU),
the reclaimed ones earliest; a partial last page is never hashed and returns to the free list.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np

from gemma_runtime.scheduling.block_manager import NO_BLOCK, BlockPool


def image_content_hash(pixel_values) -> bytes:
    """Names a preprocessed image by its pixels (float32 [patches, 3 * patch * patch]): the same picture
    at the same soft-token budget gives the same soft tokens."""
    array = np.ascontiguousarray(pixel_values.detach().cpu().numpy())
    return hashlib.blake2b(array.tobytes() + str(array.shape).encode(), digest_size=16).digest()


def page_hashes(tokens: list[int], block_size: int, image_spans, image_hashes, start: list[bytes]) -> list[bytes]:
    """Extends the hash chain `start` (hashes of the first len(start) pages) over the full pages of
    `tokens`, the sequence's token ids from page len(start) on (the pages already hashed are not copied
    again). A page's hash covers the previous one, its token ids and the images whose spans touch it.
    The chain stops at a page with an image of unknown content: such a page is never shared."""
    out = list(start)
    first = len(out)
    known = list(image_hashes) + [None] * (len(image_spans) - len(image_hashes))
    for page in range(first, first + len(tokens) // block_size):
        lo, hi = page * block_size, (page + 1) * block_size
        h = hashlib.blake2b(out[-1] if out else b"root", digest_size=16)
        h.update(np.asarray(tokens[lo - first * block_size : hi - first * block_size], dtype=np.int64).tobytes())
        for span, image_hash in zip(image_spans, known):
            if span.start < hi and span.end > lo:
                if image_hash is None:
                    return out
                h.update(image_hash + span.start.to_bytes(8, "little"))
        out.append(h.digest())
    return out


class CachingBlockPool(BlockPool):
    """A page pool with reference counts, a hash -> page map and an LRU list of evictable pages."""

    caching = True

    def __init__(self, num_blocks: int):
        super().__init__(num_blocks)
        self.refs = [0] * num_blocks
        self.hash_of: dict[int, bytes] = {}
        self.by_hash: dict[bytes, int] = {}
        self._evictable: OrderedDict[int, None] = OrderedDict()  # refcount 0 and hashed, oldest first

    @property
    def num_free(self) -> int:
        return len(self._free) + len(self._evictable)

    @property
    def num_cached(self) -> int:
        return len(self.by_hash)

    def take(self) -> int:
        if self._free:
            block = self._free.popleft()
        else:
            block, _ = self._evictable.popitem(last=False)
            del self.by_hash[self.hash_of.pop(block)]
        self.refs[block] = 1
        return block

    def give_back(self, block: int) -> None:
        self.refs[block] -= 1
        if self.refs[block] > 0:
            return
        if block in self.hash_of:
            self._evictable[block] = None  # most recently used at the end
        else:
            self._free.append(block)

    def frees_on_give_back(self, block: int) -> bool:
        return self.refs[block] == 1

    def share(self, digest: bytes) -> int | None:
        """The cached page with this hash, its count raised; None when not cached."""
        block = self.by_hash.get(digest)
        if block is None:
            return None
        self._evictable.pop(block, None)
        self.refs[block] += 1
        return block

    def publish(self, block: int, digest: bytes) -> None:
        """Names a completely computed page; the first page computed with a given hash keeps the name."""
        if block in self.hash_of or digest in self.by_hash:
            return
        self.hash_of[block] = digest
        self.by_hash[digest] = block

    def reset(self) -> None:
        self._free = deque(range(self.num_blocks))
        self.refs = [0] * self.num_blocks
        self.hash_of.clear()
        self.by_hash.clear()
        self._evictable.clear()


@dataclass
class PrefixCacheStats:
    queries: int = 0  # prompt tokens looked up (first admission of each request)
    hits: int = 0  # of which served from cache


class PrefixCache:
    """Matches sequences' hash chains against the block manager's two caching pools."""

    def __init__(self, blocks):
        self.blocks = blocks
        self.block_size = blocks.block_size
        self.stats = PrefixCacheStats()

    def hashes(self, seq) -> list[bytes]:
        """The hash chain over seq's full pages of resolved tokens, extended incrementally."""
        if len(seq.page_hashes) < seq.num_resolved_tokens // self.block_size:
            tail = seq.tokens(len(seq.page_hashes) * self.block_size, seq.num_resolved_tokens)
            seq.page_hashes = page_hashes(tail, self.block_size, seq.image_spans, seq.image_hashes, seq.page_hashes)
        return seq.page_hashes

    def _usable_pages(self, seq) -> int:
        """The longest cached prefix, in pages, that both geometries can reuse."""
        hashes = self.hashes(seq)
        bs = self.block_size
        limit = min(len(hashes), (seq.num_tokens - 1) // bs)  # the last token is always computed
        b = self.blocks
        k = 0
        if b.has_full:
            while k < limit and hashes[k] in b.full.by_hash:
                k += 1
        else:
            k = limit
        while k > 0:
            inside = next((s for s in seq.image_spans if s.start < k * bs < s.end), None)
            if inside is not None:
                k = inside.start // bs
                continue
            first = b._first_live_page(k * bs)
            if not b.has_sliding or all(hashes[p] in b.sliding.by_hash for p in range(first, k)):
                break
            k -= 1
        return k

    def admit(self, seq) -> None:
        """Maps the cached prefix into a sequence that holds no pages yet (new, or preempted: a resumed
        one finds its own pages again unless they were evicted) and starts it after that prefix."""
        if seq.num_computed != 0 or seq.block_tables.full or seq.block_tables.sliding:
            return
        k = self._usable_pages(seq)
        seq.pages_published = k  # the mapped pages are named already
        if k == 0:
            return
        b, t, hashes = self.blocks, seq.block_tables, seq.page_hashes
        if b.has_full:
            t.full.extend(b.full.share(hashes[p]) for p in range(k))
        if b.has_sliding:
            first = b._first_live_page(k * self.block_size)
            t.sliding.extend([NO_BLOCK] * first)
            t.sliding.extend(b.sliding.share(hashes[p]) for p in range(first, k))
            t.sliding_reclaimed = first
        seq.num_computed = k * self.block_size

    def count(self, seq) -> None:
        """Records a request's first admission: its prompt tokens looked up, those found in cache."""
        if seq.num_cached_tokens is None:
            seq.num_cached_tokens = seq.num_computed
            self.stats.queries += seq.num_prompt_tokens
            self.stats.hits += seq.num_computed

    def publish(self, seq) -> None:
        """Names every page of seq that is now completely computed from resolved tokens."""
        done = min(seq.num_computed, seq.num_resolved_tokens) // self.block_size
        if done == 0:
            return
        hashes = self.hashes(seq)
        t, b = seq.block_tables, self.blocks
        for page in range(seq.pages_published, min(done, len(hashes))):
            if b.has_full and page < len(t.full):
                b.full.publish(t.full[page], hashes[page])
            if b.has_sliding and page < len(t.sliding) and t.sliding[page] != NO_BLOCK:
                b.sliding.publish(t.sliding[page], hashes[page])
        seq.pages_published = max(seq.pages_published, min(done, len(hashes)))
