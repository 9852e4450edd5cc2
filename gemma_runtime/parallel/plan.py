"""The sharding plan: which part of each engine weight a rank holds, and the text spec it runs with.

Attention is split by heads (column-parallel QKV, row-parallel o_proj then one all-reduce). A layer with
fewer KV heads than ranks (the 26B-A4B's full layers have 2, the tiny engines' 1) keeps whole KV heads
replicated: rank r holds KV head r * nkv // world, which every one of its query heads reads (the heads of
one GQA group are contiguous). The dense MLP is column-parallel gate_up, row-parallel down. MoE: under
expert parallel each rank holds E / world whole experts; under plain TP each rank holds a slice of every
expert's intermediate. The router, norms, embedding (the tied LM head) and the vision tower are
replicated: the sampler needs whole logits on rank 0, so a vocab-parallel head would cost a gather of
[S, V] per step to save one [V, H] table per rank.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from gemma_runtime.engine_format.spec import EngineSpec, LayerSpec, TextSpec

ALL = slice(None)


@dataclass(frozen=True)
class Shard:
    """The pieces of a tensor a rank reads (one slice per dimension each), concatenated along `dim`."""

    dim: int
    pieces: tuple[tuple[slice, ...], ...]


@dataclass(frozen=True)
class ShardPlan:
    world: int
    rank: int
    expert_parallel: bool

    def check(self, text: TextSpec) -> None:
        """Raises ValueError naming the first size the world does not divide."""
        w = self.world

        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"--tensor-parallel-size {w} does not divide {what}")

        need(text.num_attention_heads % w == 0, f"the {text.num_attention_heads} attention heads")
        for i, layer in enumerate(text.layers):
            nkv = layer.num_kv_heads
            need(nkv % w == 0 or w % nkv == 0, f"layer {i}'s {nkv} KV heads (nor do they divide it)")
        need(text.intermediate_size % w == 0, f"the MLP's intermediate size {text.intermediate_size}")
        if text.moe is not None and self.expert_parallel:
            need(text.moe.num_experts % w == 0, f"the {text.moe.num_experts} experts (expert parallel)")
        elif text.moe is not None:
            need(text.moe.intermediate_size % w == 0, f"the experts' intermediate size {text.moe.intermediate_size}")

    # --- local sizes -------------------------------------------------------------------------------

    def q_heads(self, text: TextSpec) -> tuple[int, int]:
        """(first, count) of this rank's query heads."""
        n = text.num_attention_heads // self.world
        return self.rank * n, n

    def kv_heads(self, layer: LayerSpec) -> tuple[int, int]:
        """(first, count) of this rank's KV heads: its share, or one replicated head."""
        nkv = layer.num_kv_heads
        if nkv >= self.world:
            n = nkv // self.world
            return self.rank * n, n
        return self.rank * nkv // self.world, 1

    def experts(self, text: TextSpec) -> tuple[int, int] | None:
        """[lo, hi) of this rank's experts under expert parallel; None under plain TP (all of them)."""
        if text.moe is None or not self.expert_parallel:
            return None
        n = text.moe.num_experts // self.world
        return self.rank * n, self.rank * n + n

    def local_spec(self, spec: EngineSpec) -> EngineSpec:
        """The spec this rank's model and KV pools are built from: its heads and intermediate sizes."""
        t = spec.text
        layers = tuple(replace(layer, num_kv_heads=self.kv_heads(layer)[1]) for layer in t.layers)
        moe = t.moe
        if moe is not None:
            moe = (
                replace(moe, num_experts=moe.num_experts // self.world)
                if self.expert_parallel
                else replace(moe, intermediate_size=moe.intermediate_size // self.world)
            )
        text = replace(
            t,
            num_attention_heads=t.num_attention_heads // self.world,
            intermediate_size=t.intermediate_size // self.world,
            layers=layers,
            moe=moe,
        )
        return replace(spec, text=text)

    # --- weights -----------------------------------------------------------------------------------

    def shard(self, name: str, text: TextSpec) -> Shard | None:
        """The part of weight `name` this rank holds; None: the whole tensor (replicated)."""
        m = re.fullmatch(r"layers\.(\d+)\.(.+)", name)
        if m is None:
            return None
        layer, rest = text.layers[int(m.group(1))], m.group(2)
        fn = _RULES.get(rest)
        return fn(self, text, layer) if fn is not None else None


def _span(first: int, count: int, size: int) -> slice:
    return slice(first * size, (first + count) * size)


def _qkv_rows(plan: ShardPlan, text: TextSpec, layer: LayerSpec) -> Shard:
    d, nq, nkv = layer.head_dim, text.num_attention_heads, layer.num_kv_heads
    q0, nql = plan.q_heads(text)
    k0, nkl = plan.kv_heads(layer)
    rows = [_span(q0, nql, d), _span(nq + k0, nkl, d)]  # q rows, then k rows
    if not layer.k_eq_v:
        rows.append(_span(nq + nkv + k0, nkl, d))  # v rows
    return Shard(0, tuple((r,) for r in rows))


def _o_cols(plan: ShardPlan, text: TextSpec, layer: LayerSpec) -> Shard:
    q0, nql = plan.q_heads(text)
    return Shard(1, ((ALL, _span(q0, nql, layer.head_dim)),))


def _halves(size: int, plan: ShardPlan) -> tuple[slice, slice]:
    """This rank's rows of a fused [gate; up] of intermediate `size`: its slice of each half."""
    n = size // plan.world
    return slice(plan.rank * n, plan.rank * n + n), slice(size + plan.rank * n, size + plan.rank * n + n)


def _mlp_gate_up(plan, text, layer) -> Shard:
    return Shard(0, tuple((h,) for h in _halves(text.intermediate_size, plan)))


def _mlp_down(plan, text, layer) -> Shard:
    n = text.intermediate_size // plan.world
    return Shard(1, ((ALL, slice(plan.rank * n, plan.rank * n + n)),))


def _experts(plan, text) -> slice:
    lo, hi = plan.experts(text)
    return slice(lo, hi)


def _moe_gate_up(plan, text, layer) -> Shard:  # [E, 2Ie, H] (its scale [E, 2Ie] the same way)
    if plan.expert_parallel:
        return Shard(0, ((_experts(plan, text),),))
    return Shard(1, tuple((ALL, h) for h in _halves(text.moe.intermediate_size, plan)))


def _moe_down(plan, text, layer) -> Shard:  # [E, H, Ie]
    if plan.expert_parallel:
        return Shard(0, ((_experts(plan, text),),))
    n = text.moe.intermediate_size // plan.world
    return Shard(2, ((ALL, ALL, slice(plan.rank * n, plan.rank * n + n)),))


def _moe_down_scale(plan, text, layer) -> Shard | None:  # [E, H]: per output row, whole under plain TP
    return Shard(0, ((_experts(plan, text),),)) if plan.expert_parallel else None


# weight name within a layer -> how it is split (FP8 row scales follow their weight's rows; the scales
# of row-parallel weights are per output row, which every rank keeps whole)
_RULES = {
    "attn.qkv_proj.weight": _qkv_rows,
    "attn.qkv_proj.weight_scale": _qkv_rows,
    "attn.o_proj.weight": _o_cols,
    "mlp.gate_up_proj.weight": _mlp_gate_up,
    "mlp.gate_up_proj.weight_scale": _mlp_gate_up,
    "mlp.down_proj.weight": _mlp_down,
    "moe.gate_up_proj": _moe_gate_up,
    "moe.gate_up_proj_scale": _moe_gate_up,
    "moe.down_proj": _moe_down,
    "moe.down_proj_scale": _moe_down_scale,
}
