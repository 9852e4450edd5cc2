"""Decode steps through fixed-size buffers, replayed as CUDA graphs.

A decode step of the 26B-A4B launches a few hundred small kernels (30 layers of norms, projections,
attention, routing and experts); at batch 1 launching them costs more host time than the GPU needs to
run them. A CUDA graph records the launches once per batch size and replays them with one call.

A graph replays on the same memory it was captured on, so every input lives in a static buffer sized
for the largest captured batch, and a batch of n sequences runs on the smallest captured size B >= n.
`StepGraphs` holds those buffers for sequences of a fixed number of query rows each: one for a decode
step (`DecodeGraphs` here); more, padded row by row, for a speculative verify step or a short prompt
(`row_padded_graphs.py`). `step_graphs.py` builds the sets an engine uses.
Sequences n..B-1 are padding: token <pad> at position 0 with one key in the cache, whose K/V go to the
scratch page (the page past the last in each pool, never given to a sequence), so they read and write
nothing that belongs to anyone. Everything the forward decides on the host (grid sizes, split counts,
MoE tile counts) depends only on B and the rows per sequence, which is what makes it capturable.

Without capture (on the CPU) the same padded buffers run eagerly: tests use that to check padding and
buffer handling where no GPU is present.
"""

from __future__ import annotations

import torch

from gemma_runtime.config import ResolvedConfig
from gemma_runtime.model.forward_batch import ForwardBatch
from gemma_runtime.model.gemma4 import Gemma4TextModel
from gemma_runtime.model.graph_capture import capture_by_size


def graph_batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 16 up to max_batch (and max_batch itself): padding wastes at
    most 15 rows, and the graphs share one memory pool, so many sizes cost little memory."""
    sizes = [b for b in (1, 2, 4, 8) if b < max_batch] + list(range(16, max_batch, 16))
    return sorted(set(sizes + [max_batch]))


def speculative_graph_batch(config: ResolvedConfig) -> int:
    """Sequences up to which speculative verify steps (and MTP drafting rounds) run through padded
    buffers: speculation's own batch limit, within the decode graphs'; 0: none."""
    if config.decode_graph_max_batch <= 0 or config.speculative == "off":
        return 0
    return min(config.speculative_max_batch, config.decode_graph_max_batch)


class StepGraphs:
    """Static buffers for up to `max_batch` sequences of `query_len` query rows each (sequence b owns
    rows b * query_len ..), one graph per size of graph_batch_sizes(max_batch) when capturing."""

    capture_required = True  # a failed capture fails the engine's start (model/graph_capture.py)

    def __init__(
        self,
        text: Gemma4TextModel,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        config: ResolvedConfig,
        pad_token_id: int,
        max_batch: int,
        query_len: int,
        pool=None,
    ):
        """`pool`: a CUDA graph memory pool to capture into (another StepGraphs' `pool`: graphs that
        never replay at once can share their intermediates' memory); a new one when None."""
        self.text = text
        self.kv_caches = kv_caches
        self.batch_sizes = graph_batch_sizes(max_batch)
        self.max_batch = n = self.batch_sizes[-1]
        self.query_len = q = query_len
        self.block_size = block_size = config.block_size
        self.scratch_page = scratch_page = {"full": config.num_full_blocks, "sliding": config.num_sliding_blocks}
        self.pad_token_id = pad_token_id
        device, max_pages = config.device, config.max_pages_per_seq
        i64 = dict(dtype=torch.int64, device=device)
        self.input_ids = torch.full((n * q,), pad_token_id, **i64)
        self.positions = torch.zeros(n * q, **i64)
        self.context_lens = torch.ones(n, **i64)
        self.query_start = torch.arange(n + 1, **i64) * q  # [n + 1]: query_len rows per sequence
        self.logits_indices = torch.arange(n * q, **i64)  # every row: the caller picks the ones it samples
        self.slots = {kind: torch.full((n * q,), page * block_size, **i64) for kind, page in scratch_page.items()}
        self.tables = {
            kind: torch.full((n, max_pages), page, **i64) for kind, page in scratch_page.items()
        }  # [n, max_pages]
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}  # per captured size, the hidden states a replay writes
        self.pool = None
        if config.capture_graphs:
            self._capture(pool)

    def _batch(self, size: int) -> ForwardBatch:
        """The first `size` sequences of the static buffers as a ForwardBatch (views: no copies)."""
        rows = size * self.query_len
        return ForwardBatch(
            input_ids=self.input_ids[:rows],
            positions=self.positions[:rows],
            query_start=self.query_start[: size + 1],
            context_lens=self.context_lens[:size],
            slot_mapping={kind: s[:rows] for kind, s in self.slots.items()},
            block_tables={kind: t[:size] for kind, t in self.tables.items()},
            block_size=self.block_size,
            logits_indices=self.logits_indices[:rows],
            max_query_len=self.query_len,
        )

    def _capture(self, pool) -> None:
        self.graphs, self.outputs, self.pool = capture_by_size(
            self.batch_sizes,
            lambda size: self.text.forward(self._batch(size), self.kv_caches),  # [size * query_len, H]
            pool,
            required=self.capture_required,
            what=f"{self.query_len} row(s) a sequence",
        )

    def bucket(self, n: int) -> int:
        return next(size for size in self.batch_sizes if size >= n)

    def _fill_sequences(self, batch: ForwardBatch, n: int, size: int) -> None:
        """Context lengths and block tables of the n real sequences, and sequences n..size-1 as padding
        (their rows at position 0, writing to the scratch page, reading its one key)."""
        self.context_lens[:n].copy_(batch.context_lens)
        self.context_lens[n:size].fill_(1)
        lo, hi = n * self.query_len, size * self.query_len
        self.input_ids[lo:hi].fill_(self.pad_token_id)
        self.positions[lo:hi].zero_()
        for kind, page in self.scratch_page.items():
            self.slots[kind][lo:hi].fill_(page * self.block_size)
            table = batch.block_tables[kind]  # [n, w]: columns past w are stale but past every row's last key
            self.tables[kind][:n, : table.shape[1]].copy_(table)
            self.tables[kind][n:size, 0].fill_(page)

    def _forward(self, size: int) -> torch.Tensor:
        """The filled buffers' first `size` sequences -> final-normed hidden states [size * query_len, H]."""
        if size in self.graphs:
            self.graphs[size].replay()
            return self.outputs[size]
        return self.text.forward(self._batch(size), self.kv_caches)


class DecodeGraphs(StepGraphs):
    """Decode steps: one query row per sequence."""

    def __init__(self, text, kv_caches, config: ResolvedConfig, pad_token_id: int, pool=None):
        super().__init__(text, kv_caches, config, pad_token_id, config.decode_graph_max_batch, 1, pool)

    def fits(self, batch: ForwardBatch, query_lens: list[int]) -> bool:
        return batch.is_decode_only and batch.num_seqs <= self.max_batch

    def run(self, batch: ForwardBatch, query_lens: list[int] | None = None) -> torch.Tensor:
        """A decode batch (one query per sequence) -> the final-normed hidden states of its
        logits_indices rows [S, H]."""
        n = batch.num_seqs
        size = self.bucket(n)
        self.input_ids[:n].copy_(batch.input_ids)
        self.positions[:n].copy_(batch.positions)
        for kind in self.scratch_page:
            self.slots[kind][:n].copy_(batch.slot_mapping[kind])
        self._fill_sequences(batch, n, size)
        hidden = self._forward(size)  # [size, H]
        if batch.logits_indices.shape[0] == n:  # every row samples (a decode step), in order
            return hidden[:n]
        # a one-token prompt chunk that does not end its prompt also has one row, but samples nothing
        return hidden.index_select(0, batch.logits_indices)
