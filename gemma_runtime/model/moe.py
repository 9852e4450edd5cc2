"""Mixture-of-experts: routing and the expert GEMMs, reference implementation in plain torch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gemma_runtime.model.layers import geglu
from gemma_runtime.model.registry import register


def route_hidden(hidden: torch.Tensor, router_proj: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gemma 4 router from its input (layers.router_input): softmax over ALL experts, top-k, renormalise.
    Returns weights [T, k], ids [T, k]. The per-expert scale is already folded into each expert's down
    projection by the builder."""
    probs = F.softmax(F.linear(hidden, router_proj), dim=-1, dtype=torch.float32)  # [T, E]
    weights, ids = torch.topk(probs, k=top_k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


@register("moe", "cpu")
class TorchGroupedExperts:
    """Loops over the experts that received tokens; each runs GEGLU(gate_up) then down."""

    def __call__(
        self,
        x: torch.Tensor,  # [T, H] expert input (pre_feedforward_layernorm_2 of the residual)
        weights: torch.Tensor,  # [T, k]
        ids: torch.Tensor,  # [T, k]
        gate_up: torch.Tensor,  # [E, 2Ie, H]
        down: torch.Tensor,  # [E, H, Ie]
    ) -> torch.Tensor:
        out = torch.zeros_like(x)
        flat_ids = ids.flatten()  # [T*k]
        order = torch.argsort(flat_ids, stable=True)
        counts = torch.bincount(flat_ids, minlength=gate_up.shape[0]).tolist()
        token_of = order // ids.shape[1]
        weight_of = weights.flatten()[order]
        start = 0
        for expert, count in enumerate(counts):
            if count == 0:
                continue
            tokens = token_of[start : start + count]
            h = geglu(F.linear(x[tokens], gate_up[expert]))  # [count, Ie]
            y = F.linear(h, down[expert]) * weight_of[start : start + count, None].to(x.dtype)  # [count, H]
            out.index_add_(0, tokens, y)
            start += count
        return out

    def routed(
        self,
        x: torch.Tensor,
        router_in: torch.Tensor,
        router_proj: torch.Tensor,
        top_k: int,
        gate_up: torch.Tensor,
        down: torch.Tensor,
    ) -> torch.Tensor:
        """A MoE layer's experts from the router's input (layers.router_input): route, then run -> [T, H]."""
        weights, ids = route_hidden(router_in, router_proj, top_k)
        return self(x, weights, ids, gate_up, down)
