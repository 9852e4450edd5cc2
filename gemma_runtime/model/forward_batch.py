"""The one input every model forward takes: the whole batch flattened, no padding (as vLLM/nano-vllm).

The model runner builds it from the scheduled sequences; attention and MoE backends read it. The same
signature serves the CPU reference path and the GPU kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gemma_runtime.engine_format.spec import LayerType


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor  # [T] int64, all scheduled tokens of all sequences back to back
    positions: torch.Tensor  # [T] int64, absolute position of each token in its sequence
    query_start: torch.Tensor  # [B + 1] int64, sequence b owns tokens query_start[b]:query_start[b+1]
    context_lens: torch.Tensor  # [B] int64, tokens in the cache for sequence b once this step is written
    # Per KV geometry ("sliding", "full"): where each new token's K/V goes, and each sequence's pages.
    slot_mapping: dict[LayerType, torch.Tensor]  # [T] int64 slot = block * block_size + offset
    block_tables: dict[LayerType, torch.Tensor]  # [B, max_blocks] int64, -1 where no page (reclaimed or unused)
    block_size: int
    logits_indices: torch.Tensor  # [S] int64 rows of T whose next-token logits are needed
    # Multimodal: soft-token embeddings to scatter over the image placeholder tokens, in order.
    mm_embeds: torch.Tensor | None = None  # [N, hidden]
    mm_rows: torch.Tensor | None = None  # [N] int64 rows of T holding image placeholder tokens, in order
    # Per sequence, absolute [start, end) spans of one image's placeholder run that overlap this step's
    # queries: on sliding layers the tokens of one span attend to each other bidirectionally.
    bidirectional_spans: list[list[tuple[int, int]]] = field(default_factory=list)
    # The same spans per query row, for kernels: [T, 2] int64 [start, end) of the image span holding each
    # query token, (0, 0) outside any; None when no sequence of the step has a span.
    span_bounds: torch.Tensor | None = None
    # The longest query run of one sequence, known on the host when the batch is built (prefill grids
    # are sized by it); None makes a backend read it from query_start, a host synchronisation.
    max_query_len: int | None = None

    @property
    def num_seqs(self) -> int:
        return self.context_lens.shape[0]

    @property
    def is_decode_only(self) -> bool:
        return self.input_ids.shape[0] == self.num_seqs and not any(self.bidirectional_spans)
