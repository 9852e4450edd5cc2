"""The MTP drafter's round (N drafter steps) through fixed-size buffers, replayed as one CUDA graph.

A round is N steps of a small model at one query row per sequence, each step's argmax feeding the next
(model/assistant.py). Its work is tiny and its launches many (each step: projections, a few layers of
norms, attention over the target's cache, the MLP, the LM head), so eagerly the host launching them is
most of a round's time at small batches. One graph per batch bucket records the whole round, so a
round is one replay.

The buffers hold each sequence's newest token, the target's hidden state, its position and its block
tables. Padding sequences (n..size-1) stand at position 1 with each pool's scratch page as their first
page: they read one key there and write nothing (the drafter writes no KV). Two things are fixed at
capture: the round's length (num_speculative_tokens; a sequence allowed fewer drafts keeps the first
ones, which do not depend on the later steps) and the window the drafter's sliding layers look back (a
kernel argument): the model's own. A round whose sequences need a shorter window (the runtime already
reclaimed a page the drafter would read, mtp.py) runs eagerly.
"""

from __future__ import annotations

import torch

from gemma_runtime.model.assistant import DraftContext, Gemma4Assistant
from gemma_runtime.model.graph_capture import capture_by_size


class DraftGraphs:
    def __init__(
        self,
        model: Gemma4Assistant,
        kv_caches: list,
        config,  # ResolvedConfig
        batch_sizes: tuple[int, ...],
        num_tokens: int,
        hidden_size: int,
    ):
        self.model, self.kv_caches, self.num_tokens = model, kv_caches, num_tokens
        self.batch_sizes = list(batch_sizes)
        self.max_batch = n = self.batch_sizes[-1]
        self.window = model.key_window
        self.block_size = config.block_size
        self.scratch_page = {"full": config.num_full_blocks, "sliding": config.num_sliding_blocks}
        i64 = dict(dtype=torch.int64, device=model.device)
        self.tokens = torch.zeros(n, **i64)
        self.hidden = torch.zeros(n, hidden_size, dtype=config.dtype, device=model.device)
        self.positions = torch.ones(n, **i64)
        self.tables = {
            kind: torch.full((n, config.max_pages_per_seq), page, **i64) for kind, page in self.scratch_page.items()
        }  # [n, max_pages]
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}  # per captured size, the drafts a replay writes [size, N]
        if config.capture_graphs:
            self._capture()

    def _round(self, size: int) -> torch.Tensor:
        """The first `size` sequences' drafts [size, N] from the buffers."""
        ctx = DraftContext(
            positions=self.positions[:size],
            block_tables={kind: t[:size] for kind, t in self.tables.items()},
            block_size=self.block_size,
            key_window=self.window,
        )
        return self.model.propose(
            self.tokens[:size], self.hidden[:size], ctx, self.kv_caches, self.num_tokens, keep_logits=False
        ).tokens

    def _capture(self) -> None:
        """Not yet captured on a GPU: a capture that fails leaves rounds eager with a warning."""
        self.graphs, self.outputs, _ = capture_by_size(
            self.batch_sizes, self._round, required=False, what="the MTP drafter's rounds"
        )

    def fits(self, num_seqs: int, window: int) -> bool:
        return num_seqs <= self.max_batch and window == self.window

    def run(self, tokens: torch.Tensor, hidden: torch.Tensor, ctx: DraftContext) -> torch.Tensor:
        """tokens [n], hidden [n, B], ctx's positions and block tables -> drafts [n, N]."""
        n = tokens.shape[0]
        size = next(s for s in self.batch_sizes if s >= n)
        self.tokens[:n].copy_(tokens)
        self.hidden[:n].copy_(hidden)
        self.positions[:n].copy_(ctx.positions)
        self.positions[n:size].fill_(1)
        for kind, page in self.scratch_page.items():
            table = ctx.block_tables[kind]  # [n, w]: columns past w are stale but past every row's last key
            self.tables[kind][:n, : table.shape[1]].copy_(table)
            self.tables[kind][n:size, 0].fill_(page)
        if size in self.graphs:
            self.graphs[size].replay()
            return self.outputs[size][:n]
        return self._round(size)[:n]
