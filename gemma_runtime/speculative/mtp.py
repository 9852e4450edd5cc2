"""The `mtp` drafter: Gemma 4's assistant (model/assistant.py) behind the speculative drafter protocol.

registry.py imports this module only for `--speculative mtp`, and calls `build_drafter(ctx)`. Each step
the sequences that carry a target hidden state draft together, in one batch of drafter steps from their
newest token's position; the drafts are the drafter's argmax at each step (transformers' drafting loop),
so they are deterministic: `probs=None`, one-hot for the rejection rule.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gemma_runtime.engine_format.weights import load_weights
from gemma_runtime.model.assistant import DraftContext, Gemma4Assistant
from gemma_runtime.scheduling.block_manager import NO_BLOCK
from gemma_runtime.speculative.mtp_graphs import DraftGraphs
from gemma_runtime.speculative.protocol import Draft, DrafterContext, DraftRequest


def build_drafter(ctx: DrafterContext) -> MTPDrafter:
    spec, device = ctx.spec, torch.device(ctx.config.device)
    weights = load_weights(Path(ctx.engine_dir) / spec.assistant.folder, device, ctx.config.dtype)
    # on the device like the target's own embed scale (gemma4.py): a host scalar would copy every step
    scale = torch.tensor(spec.text.embed_scale, dtype=ctx.embed_weight.dtype, device=device)
    model = Gemma4Assistant(spec.assistant, weights, spec.text, ctx.embed_weight, scale, device)
    graphs = None
    if ctx.graph_batch_sizes:
        graphs = DraftGraphs(
            model, ctx.kv_caches, ctx.config, ctx.graph_batch_sizes, ctx.num_speculative_tokens, spec.text.hidden_size
        )
    return MTPDrafter(model, ctx.kv_caches, ctx.config.block_size, graphs)


def _padded(rows: list[list[int]], device: torch.device) -> torch.Tensor:
    width = max(1, max(len(r) for r in rows))
    return torch.tensor([r + [NO_BLOCK] * (width - len(r)) for r in rows], dtype=torch.int64, device=device)


class MTPDrafter:
    def __init__(self, model: Gemma4Assistant, kv_caches: list, block_size: int, graphs: DraftGraphs | None = None):
        """graphs: rounds through padded buffers, replayed as CUDA graphs on a GPU (mtp_graphs.py)."""
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.graphs = graphs

    def release(self, request_id: str) -> None:
        pass  # the drafter keeps nothing per sequence: the target's cache and hidden state are its state

    def _first_sliding_key(self, r: DraftRequest) -> int:
        """The oldest key still in a sliding page before r.position: the block manager reclaims pages
        behind the TARGET's window, which may hold the drafter's one or two oldest keys."""
        pages = r.block_tables.sliding
        page = min((r.position - 1) // self.block_size, len(pages) - 1)
        stop = max(0, (r.position - 1 - self.model.key_window) // self.block_size)
        while page >= stop and pages[page] != NO_BLOCK:
            page -= 1
        return (page + 1) * self.block_size

    @torch.inference_mode()
    def propose(self, requests: list[DraftRequest]) -> list[Draft]:
        ready = [i for i, r in enumerate(requests) if r.hidden is not None and r.position >= 1]
        drafts = [Draft([]) for _ in requests]
        if not ready:
            return drafts
        rs = [requests[i] for i in ready]
        device = self.model.device
        window = self.model.key_window
        if any(layer.type == "sliding" for layer in self.model.text.layers):
            # one window for the batch: no sequence may reach behind its oldest kept sliding key
            window = min([window] + [r.position - self._first_sliding_key(r) for r in rs])
        ctx = DraftContext(
            positions=torch.tensor([r.position for r in rs], dtype=torch.int64, device=device),
            block_tables={
                "full": _padded([r.block_tables.full for r in rs], device),
                "sliding": _padded([r.block_tables.sliding for r in rs], device),
            },
            block_size=self.block_size,
            key_window=max(window, 1),
        )
        tokens = torch.tensor([r.last_token_id for r in rs], dtype=torch.int64, device=device)
        hidden = torch.stack([r.hidden for r in rs])  # [S, H]
        if self.graphs is not None and self.graphs.fits(len(rs), ctx.key_window):
            drafted = self.graphs.run(tokens, hidden, ctx)  # [S, N]
        else:
            n = max(r.max_tokens for r in rs)
            drafted = self.model.propose(tokens, hidden, ctx, self.kv_caches, n, keep_logits=False).tokens
        for i, r, row in zip(ready, rs, drafted.tolist()):
            drafts[i] = Draft(row[: r.max_tokens])
        return drafts
