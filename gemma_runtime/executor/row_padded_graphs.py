"""Steps whose sequences bring several query rows each, through fixed-size buffers replayed as CUDA graphs:
speculative verify steps (`VerifyGraphs`) and short prompts (`PrefillGraphs`).

A verify step is a decode step with drafts: each sequence brings its newest token and up to N drafts
(N = num_speculative_tokens), 1..N+1 query rows, checked in one forward through the paged prefill path
(executor/verify_rows.py). It launches as many kernels as a decode step, so at small batches it is bound
by launches just as much. A short prompt's prefill is the same at batch 1: its time to first token is
mostly the host launching a few hundred kernels.

Each sequence gets `query_len` rows (StepGraphs' buffers), so the step's shape depends only on its bucket
and one graph per bucket serves any row counts up to it. A sequence with q < query_len real rows is padded
at its end with copies of its last row: same token, same position, so each padding row attends to
exactly the keys its sequence's last row sees (all in the sequence's own pages: the attention kernels
bound keys by the query's position, not by the row count), and its K/V go to the scratch page. The real
rows come first and attend causally, so they never see the padding; the hidden states of the rows the
step samples are gathered back in the unpadded batch's order.
"""

from __future__ import annotations

import torch

from gemma_runtime.config import ResolvedConfig
from gemma_runtime.executor.decode_graphs import StepGraphs, speculative_graph_batch
from gemma_runtime.executor.device_io import to_device
from gemma_runtime.model.forward_batch import ForwardBatch


class RowPaddedGraphs(StepGraphs):
    """StepGraphs whose sequences' rows are padded with copies of their last row. Not yet captured on a
    GPU (no GPU was lent when they were built), so a capture that fails leaves them eager with a warning."""

    capture_required = False

    def _unpadded_batch_fits(self, batch: ForwardBatch, query_lens: list[int]) -> bool:
        """Room for the batch, and nothing these buffers lack: image rows need the bidirectional spans."""
        return (
            0 < len(query_lens) <= self.max_batch
            and max(query_lens) <= self.query_len
            and batch.mm_embeds is None
            and batch.span_bounds is None
        )

    def run(self, batch: ForwardBatch, query_lens: list[int]) -> torch.Tensor:
        """The batch (sequence b brings query_lens[b] rows) -> the final-normed hidden states of its
        logits_indices rows, in their order [S, H]."""
        n, q = len(query_lens), self.query_len
        size = self.bucket(n)
        # per padded row: the unpadded row it copies and whether it is padding; per unpadded row: its
        # padded row. One host-to-device copy for the three.
        source, padding, padded_row = [], [], []
        start = 0
        for b, length in enumerate(query_lens):
            source.extend(start + min(j, length - 1) for j in range(q))
            padding.extend(int(j >= length) for j in range(q))
            padded_row.extend(b * q + j for j in range(length))
            start += length
        index = to_device(source + padding + padded_row, torch.int64, self.input_ids.device)
        rows = n * q
        source_rows, is_padding, padded_rows = index[:rows], index[rows : 2 * rows].bool(), index[2 * rows :]
        self.input_ids[:rows].copy_(batch.input_ids.index_select(0, source_rows))
        self.positions[:rows].copy_(batch.positions.index_select(0, source_rows))
        for kind, page in self.scratch_page.items():
            slots = batch.slot_mapping[kind].index_select(0, source_rows)
            self.slots[kind][:rows].copy_(slots.masked_fill_(is_padding, page * self.block_size))
        self._fill_sequences(batch, n, size)
        sampled = padded_rows.index_select(0, batch.logits_indices)  # [S] padded rows of the sampled ones
        return self._forward(size).index_select(0, sampled)  # [S, H]


class VerifyGraphs(RowPaddedGraphs):
    """Verify steps of up to min(speculative_max_batch, decode_graph_max_batch) sequences, N+1 rows each."""

    def __init__(self, text, kv_caches, config: ResolvedConfig, pad_token_id: int, pool=None):
        max_batch = speculative_graph_batch(config)
        super().__init__(text, kv_caches, config, pad_token_id, max_batch, config.num_speculative_tokens + 1, pool)

    def fits(self, batch: ForwardBatch, query_lens: list[int]) -> bool:
        """Decode rows with drafts: every row samples (so no sequence is mid-prompt)."""
        return (
            self._unpadded_batch_fits(batch, query_lens) and batch.logits_indices.shape[0] == batch.input_ids.shape[0]
        )


def prefill_lengths(max_tokens: int) -> list[int]:
    """16, 32, 64, ... up to max_tokens (and max_tokens itself): padding at most doubles a prompt."""
    lengths, n = [], 16
    while n < max_tokens:
        lengths.append(n)
        n *= 2
    return lengths + [max_tokens]


class PrefillGraphs:
    """A step that is one sequence's whole prompt, or the rest of it, of up to prefill_graph_max_tokens
    tokens without images: one graph per length of prefill_lengths, each a batch of one sequence."""

    def __init__(self, text, kv_caches, config: ResolvedConfig, pad_token_id: int, pool=None):
        self.by_length: dict[int, RowPaddedGraphs] = {}
        for length in reversed(prefill_lengths(config.prefill_graph_max_tokens)):  # largest first: one pool
            graphs = RowPaddedGraphs(text, kv_caches, config, pad_token_id, 1, length, pool)
            pool = graphs.pool
            self.by_length[length] = graphs
        self.pool = pool
        self.query_len = max(self.by_length)

    @property
    def graphs(self) -> dict[int, torch.cuda.CUDAGraph]:
        """The captured graphs by prompt length (what tests check)."""
        return {length: g for length, graphs in self.by_length.items() for g in graphs.graphs.values()}

    def _for(self, query_len: int) -> RowPaddedGraphs:
        return self.by_length[next(length for length in sorted(self.by_length) if length >= query_len)]

    def fits(self, batch: ForwardBatch, query_lens: list[int]) -> bool:
        """One sequence, which samples after its last row only (its prompt ends in this step)."""
        return (
            len(query_lens) == 1
            and 1 < query_lens[0] <= self.query_len
            and batch.logits_indices.shape[0] == 1
            and batch.mm_embeds is None
            and batch.span_bounds is None
        )

    def run(self, batch: ForwardBatch, query_lens: list[int]) -> torch.Tensor:
        return self._for(query_lens[0]).run(batch, query_lens)
