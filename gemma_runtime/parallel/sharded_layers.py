"""The model's backends on a tensor-parallel rank: the same registry backends, wrapped where a partial
result must be summed across ranks (the one all-reduce after each row-parallel product and after the
experts). Installed over a Gemma4TextModel's `linear` and `experts` by `shard_model`."""

from __future__ import annotations

import torch
import torch.distributed as dist

from gemma_runtime.model.moe import route_hidden

# the row-parallel products: each rank holds some input columns, so each output is a partial sum
ROW_PARALLEL = ("attn.o_proj.weight", "mlp.down_proj.weight")


class AllReducingLinear:
    """The registry's linear; the outputs of row-parallel weights are summed across ranks."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, x: torch.Tensor, weights: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        out = self.inner(x, weights, name)
        if name.endswith(ROW_PARALLEL):
            dist.all_reduce(out)
        return out


class ParallelExperts:
    """A MoE layer's experts on one rank, summed across ranks. Plain TP: every rank holds a slice of each
    expert's intermediate and runs the backend's own routed path. Expert parallel: every rank routes
    all tokens with the replicated router and computes the slots of its own experts [lo, hi); the other
    slots get weight 0 on local expert 0, so the backend needs no expert map (the CPU reference skips
    no work for them; a GPU path would mask them in the alignment kernel instead)."""

    def __init__(self, inner, experts: tuple[int, int] | None):
        self.inner = inner
        self.experts = experts
        self.accepts_fp8 = getattr(inner, "accepts_fp8", False)  # read by model/linear.py expert_weights

    def routed(self, x, router_in, router_proj, top_k, **expert_weights) -> torch.Tensor:
        if self.experts is None:
            out = self.inner.routed(x, router_in, router_proj, top_k, **expert_weights)
        else:
            lo, hi = self.experts
            weights, ids = route_hidden(router_in, router_proj, top_k)  # [T, k] each, all experts
            mine = (ids >= lo) & (ids < hi)
            out = self.inner(x, weights * mine, torch.where(mine, ids - lo, 0), **expert_weights)
        dist.all_reduce(out)  # [T, H] (or per-slot [T, k, H]): the sum over ranks is the layer's output
        return out


def shard_model(text, experts: tuple[int, int] | None) -> None:
    """Wraps a Gemma4TextModel built from a rank's local spec and shard so that its layers sum across ranks."""
    text.linear = AllReducingLinear(text.linear)
    if text.experts is not None:
        text.experts = ParallelExperts(text.experts, experts)
