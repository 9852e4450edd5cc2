"""Paged attention kernels (decode split-K with its merge, prefill/extend with image spans) against the
reference backend (model/attention.py). Unused cache slots hold NaN: a kernel that reads a slot outside
its sequence's pages or window poisons its output."""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from gemma_runtime.engine_format.spec import LayerSpec  # noqa: E402
from gemma_runtime.kernels.paged_decode import paged_decode_attention  # noqa: E402
from gemma_runtime.model.attention import TorchPagedAttention  # noqa: E402
from gemma_runtime.model.cuda_backends import TritonPagedAttention  # noqa: E402
from gemma_runtime.model.forward_batch import ForwardBatch  # noqa: E402
from tests.gpu.kernel_support import DEVICE, DTYPES, HEAD_DIMS, TOL, rel_err  # noqa: E402

# Gemma 4's head widths, plus two that are no power of two (another checkpoint's geometry): the kernels
# pad those to 32 and 128 and mask the columns beyond the head
ATTENTION_HEAD_DIMS = [*HEAD_DIMS, 24, 80]


def make_step(
    new_tokens: list[int],
    past: list[int],
    hq: int,
    hkv: int,
    d: int,
    window: int | None,
    block_size: int,
    dtype: torch.dtype,
    seed: int,
):
    """One step of a batch: sequence b has past[b] tokens cached and brings new_tokens[b] queries.

    Pages are handed out shuffled (no sequence owns consecutive pages); on sliding layers the pages wholly
    before every query's window are reclaimed (-1), as the block manager does. Unused slots hold NaN."""
    g = torch.Generator().manual_seed(seed)
    ctx = [p + n for p, n in zip(past, new_tokens)]
    pages_per_seq = [-(-c // block_size) for c in ctx]
    perm = torch.randperm(sum(pages_per_seq) + 3, generator=g).tolist()  # +3 pages nobody owns
    tables, slots, positions, query_start = [], [], [], [0]
    for b, (p, n) in enumerate(zip(past, new_tokens)):
        own = perm[sum(pages_per_seq[:b]) : sum(pages_per_seq[: b + 1])]
        if window is not None:
            first_needed = max(0, p - window + 1)  # the first query (position p) looks back window - 1 keys
            own = [page if (i + 1) * block_size > first_needed else -1 for i, page in enumerate(own)]
        tables.append(own)
        positions += list(range(p, p + n))
        query_start.append(query_start[-1] + n)
    width = max(len(t) for t in tables)
    table = torch.tensor([t + [-1] * (width - len(t)) for t in tables])  # [B, width]
    for b, (p, n) in enumerate(zip(past, new_tokens)):
        slots += [tables[b][q // block_size] * block_size + q % block_size for q in range(p, p + n)]
    num_slots = (len(perm)) * block_size
    k_cache = torch.full((num_slots, hkv, d), float("nan"), dtype=dtype)
    v_cache = torch.full((num_slots, hkv, d), float("nan"), dtype=dtype)
    for b in range(len(ctx)):  # the past tokens' K/V that are still in the cache
        for pos in range(past[b]):
            page = tables[b][pos // block_size]
            if page >= 0:
                k_cache[page * block_size + pos % block_size] = torch.randn(hkv, d, generator=g).to(dtype)
                v_cache[page * block_size + pos % block_size] = torch.randn(hkv, d, generator=g).to(dtype)
    t = sum(new_tokens)
    # queries scaled so the softmax is neither flat nor one-hot (the model's scale is 1.0 after q/k norms)
    q = (torch.randn(t, hq, d, generator=g) * d**-0.25).to(dtype)
    k = (torch.randn(t, hkv, d, generator=g) * d**-0.25).to(dtype)
    v = torch.randn(t, hkv, d, generator=g).to(dtype)
    as_dev = lambda x: torch.tensor(x, dtype=torch.int64, device=DEVICE)  # noqa: E731
    batch = ForwardBatch(
        input_ids=torch.zeros(t, dtype=torch.int64, device=DEVICE),
        positions=as_dev(positions),
        query_start=as_dev(query_start),
        context_lens=as_dev(ctx),
        slot_mapping={"sliding": as_dev(slots), "full": as_dev(slots)},
        block_tables={"sliding": table.to(DEVICE), "full": table.to(DEVICE)},
        block_size=block_size,
        logits_indices=as_dev([s - 1 for s in query_start[1:]]),
    )
    dev = lambda x: x.to(DEVICE)  # noqa: E731
    return dev(q), dev(k), dev(v), (dev(k_cache), dev(v_cache)), batch


def layer(kind: str, d: int, hkv: int) -> LayerSpec:
    return LayerSpec(type=kind, head_dim=d, num_kv_heads=hkv, k_eq_v=False, rope_theta=1e4, rope_angles=d // 2)


def compare_backends(step, kind: str, window: int) -> float:
    q, k, v, (kc, vc), batch = step
    spec = layer(kind, q.shape[-1], k.shape[1])
    slots = batch.slot_mapping[kind]
    kc.index_copy_(0, slots, k)  # the step's own K/V are in the cache before attention runs
    vc.index_copy_(0, slots, v)
    ref = TorchPagedAttention()(q, (kc, vc), batch, spec, window)
    out = TritonPagedAttention()(q, (kc, vc), batch, spec, window)
    return rel_err(out, ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", ATTENTION_HEAD_DIMS)
@pytest.mark.parametrize("kind", ["sliding", "full"])
def test_decode_attention(dtype, d, kind):
    # 3 sequences, one query each; GQA group 4; lengths straddle pages and the window (window 24, page 8)
    hq, hkv, window = 8, 2, 24
    step = make_step(
        [1, 1, 1],
        past=[0, 30, 57],
        hq=hq,
        hkv=hkv,
        d=d,
        window=window if kind == "sliding" else None,
        block_size=8,
        dtype=dtype,
        seed=d,
    )
    assert step[4].is_decode_only
    assert compare_backends(step, kind, window) < TOL[dtype]


@pytest.mark.parametrize("d", [64, 24])  # 24: the merge kernel over a padded head too
@pytest.mark.parametrize("splits", [1, 2, 8])
def test_decode_split_count_does_not_change_the_result(splits, d):
    q, k, v, (kc, vc), batch = make_step(
        [1, 1], past=[5, 70], hq=4, hkv=1, d=d, window=None, block_size=16, dtype=torch.float32, seed=splits
    )
    kc.index_copy_(0, batch.slot_mapping["full"], k)
    vc.index_copy_(0, batch.slot_mapping["full"], v)
    one = paged_decode_attention(q, kc, vc, batch.block_tables["full"], batch.context_lens, 16, None, num_splits=1)
    many = paged_decode_attention(
        q, kc, vc, batch.block_tables["full"], batch.context_lens, 16, None, num_splits=splits
    )
    assert rel_err(many, one) < 1e-3


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", ATTENTION_HEAD_DIMS)
@pytest.mark.parametrize("kind", ["sliding", "full"])
def test_prefill_and_extend_attention(dtype, d, kind):
    # a fresh prompt, a chunk extending a cached prefix past the window, and a decode row mixed in
    window = 16
    step = make_step(
        [37, 20, 1],
        past=[0, 45, 9],
        hq=4,
        hkv=2,
        d=d,
        window=window if kind == "sliding" else None,
        block_size=8,
        dtype=dtype,
        seed=d + 1,
    )
    assert not step[4].is_decode_only
    assert compare_backends(step, kind, window) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [32, 256])
@pytest.mark.parametrize("kind", ["sliding", "full"])
def test_verify_rows_padded_with_copies_of_the_last(dtype, d, kind):
    """A verify step through the padded buffers (executor/row_padded_graphs.py): each sequence's 1-4 rows are
    padded to 4 with copies of its last row (same query, same position). The kernel bounds each row's
    keys by its position, so the real rows give the unpadded step's output and every copy its last row's."""
    window = 16
    lens = [4, 2, 1]
    q, k, v, (kc, vc), batch = make_step(
        lens,
        past=[30, 7, 19],
        hq=4,
        hkv=2,
        d=d,
        window=window if kind == "sliding" else None,
        block_size=8,
        dtype=dtype,
        seed=d + 3,
    )
    spec = layer(kind, d, 2)
    kc.index_copy_(0, batch.slot_mapping[kind], k)
    vc.index_copy_(0, batch.slot_mapping[kind], v)
    ref = TorchPagedAttention()(q, (kc, vc), batch, spec, window)
    starts = batch.query_start.tolist()
    source = [starts[b] + min(j, n - 1) for b, n in enumerate(lens) for j in range(4)]  # [3 * 4] unpadded rows
    index = torch.tensor(source, device=DEVICE)
    padded = ForwardBatch(
        **{
            **batch.__dict__,
            "input_ids": batch.input_ids[index],
            "positions": batch.positions[index],
            "query_start": torch.arange(len(lens) + 1, device=DEVICE) * 4,
            "logits_indices": torch.arange(len(source), device=DEVICE),
            "max_query_len": 4,
        }
    )
    out = TritonPagedAttention()(q[index], (kc, vc), padded, spec, window)  # [12, Hq, d]
    assert rel_err(out, ref[index]) < TOL[dtype]


def span_bounds(batch: ForwardBatch) -> torch.Tensor:
    """[T, 2]: each query row's image span [start, end) from batch.bidirectional_spans, (0, 0) outside."""
    starts, positions = batch.query_start.tolist(), batch.positions.tolist()
    rows = []
    for b, spans in enumerate(batch.bidirectional_spans):
        for p in positions[starts[b] : starts[b + 1]]:
            rows.append(next(((a, e) for a, e in spans if a <= p < e), (0, 0)))
    return torch.tensor(rows, dtype=torch.int64, device=DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [32, 256])
def test_image_spans_are_bidirectional_on_sliding_layers(dtype, d):
    """The kernel's span rule against the reference: a fresh prompt with one image; a chunk without
    images; a chunk whose image (20 tokens) is longer than the window (16); two images in one prompt.
    Full layers ignore the spans (causal)."""
    window = 16
    q, k, v, cache, batch = make_step(
        [20, 6, 30, 25], past=[0, 3, 10, 0], hq=4, hkv=2, d=d, window=window, block_size=8, dtype=dtype, seed=7
    )
    batch.bidirectional_spans = [[(4, 12)], [], [(14, 34)], [(2, 7), (9, 20)]]
    batch.span_bounds = span_bounds(batch)
    for kind in ("sliding", "full"):
        assert compare_backends((q, k, v, cache, batch), kind, window) < TOL[dtype]
    # the spans matter: without them the kernel's sliding output differs from the reference
    no_spans = ForwardBatch(**{**batch.__dict__, "span_bounds": None})
    assert compare_backends((q, k, v, cache, no_spans), "sliding", window) > 5 * TOL[dtype]
