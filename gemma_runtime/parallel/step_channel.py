"""A step's ForwardBatch from rank 0 to every rank, as tensors through the collectives: a fixed header,
one int64 payload with every index tensor back to back, then the image soft tokens when there are any.
Three broadcasts a step, no pickling. The header's first value is the operation (a step, or stop); its
last says how every rank runs the batch: eagerly (0), or through its padded step graphs of one kind (1 +
the kind's place in executor/step_graphs.GRAPH_KINDS), which every rank fills from the same unpadded
batch and replays with its collectives captured."""

from __future__ import annotations

import torch
import torch.distributed as dist

from gemma_runtime.model.forward_batch import ForwardBatch

OP_STOP, OP_FORWARD = 0, 1
KINDS = ("full", "sliding")
HEADER = 15  # op, T, B, S, n_mm, hidden, has_span_bounds, max_query_len, n_spans, block_size, 2 slots, 2 widths,
# graph (0: eager; else 1 + the place in GRAPH_KINDS of the step graphs that run it)


def _int(values, device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64, device=device)


def send_stop(device: torch.device) -> None:
    dist.broadcast(_int([OP_STOP] + [0] * (HEADER - 1), device), src=0)


def send_batch(batch: ForwardBatch, embed_dtype: torch.dtype, graph: int = 0) -> None:
    """Rank 0: broadcasts the batch every other rank's forward reads, and how they run it (`graph`)."""
    device = batch.input_ids.device
    T, B = batch.input_ids.shape[0], batch.num_seqs
    spans = [(b, s, e) for b, seq_spans in enumerate(batch.bidirectional_spans) for s, e in seq_spans]
    n_mm = 0 if batch.mm_embeds is None else batch.mm_embeds.shape[0]
    has_slots = [int(k in batch.slot_mapping) for k in KINDS]
    widths = [batch.block_tables[k].shape[1] if k in batch.block_tables else -1 for k in KINDS]
    header = [OP_FORWARD, T, B, batch.logits_indices.shape[0], n_mm, 0 if n_mm == 0 else batch.mm_embeds.shape[1]]
    header += [int(batch.span_bounds is not None), batch.max_query_len or -1, len(spans), batch.block_size]
    dist.broadcast(_int(header + has_slots + widths + [graph], device), src=0)
    parts = [batch.input_ids, batch.positions, batch.query_start, batch.context_lens]
    parts += [batch.slot_mapping[k] for k in KINDS if k in batch.slot_mapping]
    parts += [batch.block_tables[k].reshape(-1) for k in KINDS if k in batch.block_tables]  # [B * width]
    parts.append(batch.logits_indices)
    if n_mm:
        parts.append(batch.mm_rows)
    if batch.span_bounds is not None:
        parts.append(batch.span_bounds.reshape(-1))  # [T * 2]
    if spans:
        parts.append(_int(spans, device).reshape(-1))  # [n_spans * 3]: sequence, start, end
    dist.broadcast(torch.cat([p.to(torch.int64) for p in parts]), src=0)
    if n_mm:
        dist.broadcast(batch.mm_embeds.to(embed_dtype).contiguous(), src=0)


def receive(device: torch.device, embed_dtype: torch.dtype) -> tuple[ForwardBatch, int] | None:
    """Ranks 1..N-1: the next step's batch and how to run it (send_batch's `graph`), or None when rank 0
    says stop."""
    header = torch.empty(HEADER, dtype=torch.int64, device=device)
    dist.broadcast(header, src=0)
    op, T, B, S, n_mm, hidden, has_sb, max_q, n_spans, block_size, *rest = header.tolist()
    if op == OP_STOP:
        return None
    has_slots, widths, graph = dict(zip(KINDS, rest[:2])), dict(zip(KINDS, rest[2:4])), rest[4]
    sizes = [T, T, B + 1, B]
    sizes += [T for k in KINDS if has_slots[k]]
    sizes += [B * widths[k] for k in KINDS if widths[k] >= 0]
    sizes += [S] + ([n_mm] if n_mm else []) + ([2 * T] if has_sb else []) + ([3 * n_spans] if n_spans else [])
    payload = torch.empty(sum(sizes), dtype=torch.int64, device=device)
    dist.broadcast(payload, src=0)
    parts = iter(payload.split(sizes))
    ids, positions, query_start, context_lens = (next(parts) for _ in range(4))
    slots = {k: next(parts) for k in KINDS if has_slots[k]}
    tables = {k: next(parts).view(B, widths[k]) for k in KINDS if widths[k] >= 0}  # [B, width]
    logits_indices = next(parts)
    mm_rows = next(parts) if n_mm else None
    span_bounds = next(parts).view(T, 2) if has_sb else None  # [T, 2]
    seq_spans: list[list[tuple[int, int]]] = [[] for _ in range(B)]
    if n_spans:
        for b, s, e in next(parts).view(n_spans, 3).tolist():  # [n_spans, 3]
            seq_spans[b].append((s, e))
    mm_embeds = None
    if n_mm:
        mm_embeds = torch.empty((n_mm, hidden), dtype=embed_dtype, device=device)
        dist.broadcast(mm_embeds, src=0)
    batch = ForwardBatch(
        input_ids=ids,
        positions=positions,
        query_start=query_start,
        context_lens=context_lens,
        slot_mapping=slots,
        block_tables=tables,
        block_size=block_size,
        logits_indices=logits_indices,
        mm_embeds=mm_embeds,
        mm_rows=mm_rows,
        bidirectional_spans=seq_spans,
        span_bounds=span_bounds,
        max_query_len=None if max_q < 0 else max_q,
    )
    return batch, graph
