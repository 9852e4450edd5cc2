"""The device mirror of the block tables equals the block manager's lists, step after step, through
appends, sliding-window reclaim, preemption (free and start over), finishing and row reuse."""

from __future__ import annotations

import random

import torch

from gemma_runtime.executor.device_block_tables import DeviceBlockTables
from gemma_runtime.scheduling.block_manager import NO_BLOCK, BlockManager, BlockTables


def expected(tables: list[BlockTables], kind: str) -> torch.Tensor:
    width = max((len(getattr(t, kind)) for t in tables), default=0) or 1
    return torch.tensor([getattr(t, kind) + [NO_BLOCK] * (width - len(getattr(t, kind))) for t in tables])


def test_mirror_follows_the_lists_through_random_steps():
    rng = random.Random(0)
    bs, window, max_len = 4, 8, 96
    manager = BlockManager(bs, num_full_blocks=200, num_sliding_blocks=200, sliding_window=window)
    mirror = DeviceBlockTables(max_rows=2, max_pages=max_len // bs, device=torch.device("cpu"))  # grows past 2
    live: dict[str, tuple[BlockTables, int]] = {}  # request id -> (tables, tokens computed)
    next_id, checked, reclaimed_seen, grew = 0, 0, False, False
    for step in range(300):
        if len(live) < 6 and rng.random() < 0.3:
            live[f"r{next_id}"] = (BlockTables(), 0)
            next_id += 1
        batch = [rid for rid in live if rng.random() < 0.8]
        for rid in batch:
            tables, done = live[rid]
            new = min(rng.choice([1, 1, 1, 5, 13]), max_len - done)
            if new == 0 or rng.random() < 0.03:  # finished, or preempted (freed; recomputed from 0)
                manager.free(tables)
                if new == 0:
                    mirror.release(rid)
                    del live[rid]
                    continue
                done = 0
            manager.allocate(tables, done, new)
            live[rid] = (tables, done + new)
            reclaimed_seen |= tables.sliding_reclaimed > 0
        batch = [rid for rid in batch if rid in live]
        if not batch:
            continue
        got = mirror.gather(batch, [live[rid][0] for rid in batch])
        grew |= mirror.tables["full"].shape[0] > 2
        for kind in ("full", "sliding"):
            want = expected([live[rid][0] for rid in batch], kind)
            # past a sequence's own length the row may hold stale pages: compare each row up to its length
            for i, rid in enumerate(batch):
                n = len(getattr(live[rid][0], kind))
                assert got[kind][i, :n].tolist() == want[i, :n].tolist(), (step, rid, kind)
            assert got[kind].shape == want.shape
        checked += 1
    assert checked > 200 and reclaimed_seen and grew
