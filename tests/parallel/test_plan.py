"""The sharding plan on the real models' head counts, without processes: every query head a rank holds
reads a KV head the same rank holds (split or replicated), and the pieces of the fused weights add up."""

from __future__ import annotations

import pytest

from gemma_runtime.engine_format.spec import LayerSpec, MoESpec, TextSpec
from gemma_runtime.parallel.plan import ShardPlan


def text(nq: int, kv: tuple[int, ...], moe: MoESpec | None = None) -> TextSpec:
    layers = tuple(
        LayerSpec("full" if n < 4 else "sliding", 512 if n < 4 else 256, n, n < 4, 1e4, 64) for n in kv
    )  # full layers (few KV heads) are K=V, as in Gemma 4
    return TextSpec(262144, 2816, len(kv), nq, 2112, 1e-6, 30.0, 1024, 53.0, layers, moe)


GEMMA_26B = text(16, (8, 2), MoESpec(128, 8, 704))  # sliding layers 8 KV heads, full layers 2
GEMMA_31B = text(32, (16, 4))


@pytest.mark.parametrize("spec", [GEMMA_26B, GEMMA_31B], ids=["26b-a4b", "31b"])
@pytest.mark.parametrize("world", [2, 4, 8])
def test_each_query_head_reads_a_kv_head_of_its_rank(spec, world):
    nq = spec.num_attention_heads
    for layer in spec.layers:
        group = nq // layer.num_kv_heads
        for rank in range(world):
            plan = ShardPlan(world, rank, expert_parallel=False)
            plan.check(spec)
            q0, nql = plan.q_heads(spec)
            k0, nkl = plan.kv_heads(layer)
            assert all(k0 <= h // group < k0 + nkl for h in range(q0, q0 + nql)), (layer, rank)
            shard = plan.shard("layers.0.attn.qkv_proj.weight", text(nq, (layer.num_kv_heads,)))
            rows = sum(s[0].stop - s[0].start for s in shard.pieces)
            assert rows == (nql + nkl * (1 if layer.k_eq_v else 2)) * layer.head_dim


def test_experts_split_whole_under_expert_parallel_and_by_intermediate_otherwise():
    ep = [ShardPlan(4, r, expert_parallel=True).experts(GEMMA_26B) for r in range(4)]
    assert ep == [(0, 32), (32, 64), (64, 96), (96, 128)]
    tp = ShardPlan(4, 1, expert_parallel=False)
    assert tp.experts(GEMMA_26B) is None
    gate_up = tp.shard("layers.1.moe.gate_up_proj", GEMMA_26B)  # [E, 2Ie, H]: a slice of each half
    assert [p[1] for p in gate_up.pieces] == [slice(176, 352), slice(704 + 176, 704 + 352)]


def test_sizes_the_world_does_not_divide_are_refused_by_name():
    with pytest.raises(ValueError, match="attention heads"):
        ShardPlan(3, 0, expert_parallel=False).check(GEMMA_26B)
    with pytest.raises(ValueError, match="the 136 experts"):
        ShardPlan(16, 0, expert_parallel=True).check(text(16, (16,), MoESpec(128 + 8, 8, 704)))
