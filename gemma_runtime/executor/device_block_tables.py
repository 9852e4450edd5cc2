"""Every running sequence's block tables kept on the device, one row per sequence, updated in place.

Rebuilding a [B, pages] table from Python lists each step costs host time that grows with batch and
context (256 sequences at 32k tokens are half a million entries per geometry per step). Between two
steps a sequence's tables change in only three ways (block_manager.py): pages appended at the end,
sliding pages behind the window set to NO_BLOCK from the reclaim pointer on, and pages of rejected
speculative drafts cut from the end (`trimmed_to`: the row is resent from there). So each step sends only
those entries (a few per sequence) and the batch's tables are a gather of its rows on the device. A
free() (finish, preemption) bumps the tables' generation, and the row is then written from scratch.

Entries of a row past its sequence's length are stale, never cleared: attention reads only the pages
below each sequence's context length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gemma_runtime.executor.device_io import to_device
from gemma_runtime.scheduling.block_manager import NO_BLOCK, BlockTables

KINDS = ("full", "sliding")


@dataclass
class _Synced:
    row: int
    generation: int
    length: dict[str, int]  # entries already on the device, per geometry
    sliding_reclaimed: int


class DeviceBlockTables:
    def __init__(self, max_rows: int, max_pages: int, device: torch.device):
        self.device = device
        self.max_pages = max_pages
        self.tables = {
            kind: torch.full((max_rows, max_pages), NO_BLOCK, dtype=torch.int64, device=device) for kind in KINDS
        }
        self._free_rows = list(range(max_rows - 1, -1, -1))
        self._synced: dict[str, _Synced] = {}  # request id -> what its row holds

    def release(self, request_id: str) -> None:
        synced = self._synced.pop(request_id, None)
        if synced is not None:
            self._free_rows.append(synced.row)

    def gather(self, request_ids: list[str], tables: list[BlockTables]) -> dict[str, torch.Tensor]:
        """Brings the sequences' rows up to date, then returns their tables: kind -> [B, width] int64,
        width the longest table in the batch (NO_BLOCK or stale past each sequence's own length)."""
        rows, flat, values = [], {k: [] for k in KINDS}, {k: [] for k in KINDS}
        for request_id, t in zip(request_ids, tables):
            synced = self._synced.get(request_id)
            if synced is None or synced.generation != t.generation:
                row = synced.row if synced is not None else self._take_row()
                synced = self._synced[request_id] = _Synced(row, t.generation, {k: 0 for k in KINDS}, 0)
            base = synced.row * self.max_pages
            if t.trimmed_to is not None:  # speculation rolled pages back: what follows is new
                for kind in KINDS:
                    synced.length[kind] = min(synced.length[kind], t.trimmed_to)
                t.trimmed_to = None
            sent_sliding = synced.length["sliding"]  # before this step's appends, which carry their NO_BLOCKs
            for kind in KINDS:
                entries = getattr(t, kind)
                start = synced.length[kind]
                flat[kind].extend(range(base + start, base + len(entries)))
                values[kind].extend(entries[start:])
                synced.length[kind] = len(entries)
            # reclaimed sliding pages below what was already sent become NO_BLOCK on the device too
            stop = min(t.sliding_reclaimed, sent_sliding)
            for page in range(synced.sliding_reclaimed, stop):
                flat["sliding"].append(base + page)
                values["sliding"].append(NO_BLOCK)
            synced.sliding_reclaimed = max(synced.sliding_reclaimed, stop)
            rows.append(synced.row)
        index = to_device(rows, torch.int64, self.device)  # [B]
        out = {}
        for kind in KINDS:
            table = self.tables[kind]
            if flat[kind]:
                table.view(-1).index_copy_(
                    0,
                    to_device(flat[kind], torch.int64, self.device),
                    to_device(values[kind], torch.int64, self.device),
                )
            width = max((len(getattr(t, kind)) for t in tables), default=0) or 1
            out[kind] = table[:, :width].index_select(0, index)  # [B, width]
        return out

    def _take_row(self) -> int:
        if not self._free_rows:  # more sequences hold pages than rows were made for (preempted ones wait)
            n = self.tables["full"].shape[0]
            for kind in KINDS:
                grown = torch.full((n, self.max_pages), NO_BLOCK, dtype=torch.int64, device=self.device)
                self.tables[kind] = torch.cat([self.tables[kind], grown])  # [2n, max_pages]
            self._free_rows = list(range(2 * n - 1, n - 1, -1))
        return self._free_rows.pop()
