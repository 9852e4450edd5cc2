"""Speculative verify steps through fixed-size buffers, replayed as CUDA graphs.

A verify step is a decode step with drafts: each sequence brings its newest token and up to N drafts
(N = num_speculative_tokens), 1..N+1 query rows, and the target checks them in one forward through
the paged prefill path (executor/verify_rows.py). It launches as many kernels as a decode step, so at
small batches it is bound by launches just as much; it is also where speculation is on, at batches
up to speculative_max_batch. Here every sequence gets N+1 rows (StepGraphs' query_len), so the batch's
shape depends only on its bucket and one graph per bucket serves any mix of draft counts.

A sequence with q < N+1 real rows is padded at its end with copies of its last row: same token, same
position, so each padding row attends to exactly the keys its sequence's last row sees (all in the
sequence's own pages: the attention kernels bound keys by the query's position, not by the row count),
and its K/V go to the scratch page. The real rows come first and attend causally, so they never see the
padding; the hidden states of the real rows are gathered back in the unpadded batch's row order.
"""

from __future__ import annotations

import logging

import torch

from gemma_runtime.config import ResolvedConfig
from gemma_runtime.executor.decode_graphs import StepGraphs
from gemma_runtime.executor.device_io import to_device
from gemma_runtime.model.forward_batch import ForwardBatch

log = logging.getLogger(__name__)


class VerifyGraphs(StepGraphs):
    """Verify steps of up to min(speculative_max_batch, decode_graph_max_batch) sequences."""

    def __init__(self, text, kv_caches, config: ResolvedConfig, pad_token_id: int, pool=None):
        max_batch = min(config.speculative_max_batch, config.decode_graph_max_batch)
        super().__init__(text, kv_caches, config, pad_token_id, max_batch, config.num_speculative_tokens + 1, pool)

    def _capture(self, pool) -> None:
        """As the decode graphs, except that a capture that fails leaves verify steps eager (the padded
        buffers still run, without replay) and says so, rather than failing the engine's start: these
        graphs were first built where no GPU was lent (docs/benchmarks.md), the decode graphs were not."""
        try:
            super()._capture(pool)
        except RuntimeError as e:
            self.graphs.clear()
            self.outputs.clear()
            torch.cuda.synchronize()
            log.warning("verify-step CUDA graphs not captured (%s): verify steps run eagerly", e)

    def fits(self, batch: ForwardBatch, query_lens: list[int]) -> bool:
        """A batch of decode rows with drafts: every row samples (so no sequence is mid-prompt), no
        sequence has more than N+1 rows, and no image is in it (image rows need the bidirectional spans,
        which these buffers lack)."""
        return (
            0 < len(query_lens) <= self.max_batch
            and max(query_lens) <= self.query_len
            and batch.mm_embeds is None
            and batch.span_bounds is None
            and batch.logits_indices.shape[0] == batch.input_ids.shape[0]
        )

    def run(self, batch: ForwardBatch, query_lens: list[int]) -> torch.Tensor:
        """The batch (sequence b brings query_lens[b] rows, all sampled) -> the final-normed hidden states
        of its rows in its own order [sum(query_lens), H]."""
        n, q = len(query_lens), self.query_len
        size = self.bucket(n)
        # per padded row: the unpadded row it copies and whether it is padding; then the padded rows of
        # the real ones, in order. One host-to-device copy for the three.
        source, padding, real = [], [], []
        start = 0
        for b, length in enumerate(query_lens):
            source.extend(start + min(j, length - 1) for j in range(q))
            padding.extend(int(j >= length) for j in range(q))
            real.extend(b * q + j for j in range(length))
            start += length
        index = to_device(source + padding + real, torch.int64, self.input_ids.device)
        rows = n * q
        source_rows, is_padding, real_rows = index[:rows], index[rows : 2 * rows].bool(), index[2 * rows :]
        self.input_ids[:rows].copy_(batch.input_ids.index_select(0, source_rows))
        self.positions[:rows].copy_(batch.positions.index_select(0, source_rows))
        for kind, page in self.scratch_page.items():
            slots = batch.slot_mapping[kind].index_select(0, source_rows)
            self.slots[kind][:rows].copy_(slots.masked_fill_(is_padding, page * self.block_size))
        self._fill_sequences(batch, n, size)
        return self._forward(size).index_select(0, real_rows)  # [sum(query_lens), H]
