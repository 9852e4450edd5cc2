"""Paged attention: the reference implementation in plain torch (CPU, and any device as a fallback).

Each layer's cache is a pair of flat tensors [num_slots, kv_heads, head_dim] indexed by slot
(block * block_size + offset). Sliding layers and full layers have their own page pools and block tables.
The step's own K/V are already in the cache when attention runs: the norm backend's `qkv` step writes
them (model/layers.py; on CUDA one kernel normalises q, k, v and stores k, v in place).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gemma_runtime.engine_format.spec import LayerSpec
from gemma_runtime.model.forward_batch import ForwardBatch
from gemma_runtime.model.registry import register


def _key_mask(
    q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None, spans: list[tuple[int, int]]
) -> torch.Tensor:
    """[n_q, n_k] bool: causal, OR same image span (sliding layers only), AND inside the window."""
    allowed = k_pos[None, :] <= q_pos[:, None]
    for start, end in spans:
        in_q = (q_pos >= start) & (q_pos < end)
        in_k = (k_pos >= start) & (k_pos < end)
        allowed |= in_q[:, None] & in_k[None, :]
    if window is not None:
        allowed &= k_pos[None, :] > q_pos[:, None] - window
    return allowed


@register("attention", "cpu")
class TorchPagedAttention:
    """Gathers each sequence's keys from its pages and runs masked SDPA, one sequence at a time."""

    def __call__(
        self,
        q: torch.Tensor,  # [T, Hq, d]
        kv_cache: tuple[torch.Tensor, torch.Tensor],  # [slots, Hkv, d] each, this step's K/V included
        batch: ForwardBatch,
        layer: LayerSpec,
        sliding_window: int,
    ) -> torch.Tensor:
        k_cache, v_cache = kv_cache
        is_sliding = layer.type == "sliding"
        window = sliding_window if is_sliding else None
        block_tables = batch.block_tables[layer.type]
        out = torch.empty_like(q)
        group = q.shape[1] // k_cache.shape[1]
        starts = batch.query_start.tolist()
        for b, ctx in enumerate(batch.context_lens.tolist()):
            q_lo, q_hi = starts[b], starts[b + 1]
            q_pos = batch.positions[q_lo:q_hi]
            first_key = max(0, int(q_pos[0]) - window + 1) if window is not None else 0
            k_pos = torch.arange(first_key, ctx, device=q.device)
            pages = block_tables[b, k_pos // batch.block_size]
            slots = pages * batch.block_size + k_pos % batch.block_size
            keys = k_cache.index_select(0, slots).to(q.dtype)  # [n_k, Hkv, d]
            values = v_cache.index_select(0, slots).to(q.dtype)
            spans = batch.bidirectional_spans[b] if is_sliding and batch.bidirectional_spans else []
            mask = _key_mask(q_pos, k_pos, window, spans)  # [n_q, n_k]
            qs = q[q_lo:q_hi].transpose(0, 1)  # [Hq, n_q, d]
            ks = keys.repeat_interleave(group, dim=1).transpose(0, 1)  # [Hq, n_k, d]
            vs = values.repeat_interleave(group, dim=1).transpose(0, 1)
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask[None], scale=1.0)  # [Hq, n_q, d]
            out[q_lo:q_hi] = o.transpose(0, 1)
        return out
