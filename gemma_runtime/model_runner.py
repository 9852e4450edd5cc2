"""The only place that turns scheduled sequences into tensors: builds the ForwardBatch, runs the vision
tower for new images, the decoder, and the sampler."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gemma_runtime.api import TokenLogprob
from gemma_runtime.block_manager import NO_BLOCK
from gemma_runtime.engine_config import EngineSpec
from gemma_runtime.forward_batch import ForwardBatch
from gemma_runtime.model.gemma4 import Gemma4TextModel
from gemma_runtime.sampler import SamplingInput, sample
from gemma_runtime.scheduler import ScheduledSeq
from gemma_runtime.sequence import Sequence


@dataclass(frozen=True)
class SampledToken:
    seq: Sequence
    token_id: int
    logprob: TokenLogprob | None


class ModelRunner:
    def __init__(self, spec: EngineSpec, weights: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype,
                 block_size: int, num_full_blocks: int, num_sliding_blocks: int, seed: int):
        self.spec = spec
        self.device = device
        self.block_size = block_size
        text_weights = {k: v for k, v in weights.items() if not k.startswith("vision.")}
        placeholders = spec.multimodal.placeholder_ids if spec.multimodal else ()
        self.text = Gemma4TextModel(spec.text, text_weights, device, placeholders, spec.tokens.pad_token_id)
        self.vision = None
        if spec.vision is not None:
            from gemma_runtime.vision.encoder import VisionEncoder

            self.vision = VisionEncoder(spec.vision, spec.text.hidden_size, dtype).to(device)
            self.vision.load_state_dict({k[len("vision."):]: v for k, v in weights.items() if k.startswith("vision.")})
        self.kv_caches = self._allocate_kv(dtype, num_full_blocks, num_sliding_blocks)
        self.default_generator = torch.Generator(device=device).manual_seed(seed)

    def _allocate_kv(self, dtype, num_full_blocks, num_sliding_blocks) -> list[tuple[torch.Tensor, torch.Tensor]]:
        caches = []
        for layer in self.spec.text.layers:
            blocks = num_full_blocks if layer.type == "full" else num_sliding_blocks
            shape = (blocks * self.block_size, layer.num_kv_heads, layer.head_dim)  # [slots, kv_heads, head_dim]
            caches.append((torch.zeros(shape, dtype=dtype, device=self.device),
                           torch.zeros(shape, dtype=dtype, device=self.device)))
        return caches

    @torch.inference_mode()
    def run(self, scheduled: list[ScheduledSeq]) -> list[SampledToken]:
        batch = self._build_batch(scheduled)
        hidden = self.text.forward(batch, self.kv_caches)
        sampling_seqs = [s.seq for s in scheduled if s.completes_prompt]
        if not sampling_seqs:
            return []
        logits = self.text.logits(hidden)  # [S, V]
        rows = [SamplingInput(seq.sampling, seq.output_token_ids, seq.generator) for seq in sampling_seqs]
        tokens, logprobs = sample(logits, rows, self.default_generator)
        return [SampledToken(seq, t, lp) for seq, t, lp in zip(sampling_seqs, tokens, logprobs)]

    # --- batch construction ------------------------------------------------------------------------

    def _build_batch(self, scheduled: list[ScheduledSeq]) -> ForwardBatch:
        bs = self.block_size
        input_ids, positions, query_start, context_lens, logits_indices = [], [], [0], [], []
        slots = {"full": [], "sliding": []}
        tables = {"full": [], "sliding": []}
        mm_embeds, mm_mask, spans = [], [], []
        for item in scheduled:
            seq, lo = item.seq, item.seq.num_computed
            hi = lo + item.num_new
            input_ids.extend(seq.tokens(lo, hi))
            positions.extend(range(lo, hi))
            for kind in ("full", "sliding"):
                table = getattr(seq.block_tables, kind)
                slots[kind].extend(table[p // bs] * bs + p % bs if table else -1 for p in range(lo, hi))
                tables[kind].append(table)
            query_start.append(query_start[-1] + item.num_new)
            context_lens.append(hi)
            if item.completes_prompt:
                logits_indices.append(query_start[-1] - 1)
            seq_mask, seq_spans = self._images_in_chunk(seq, lo, hi, mm_embeds)
            mm_mask.extend(seq_mask)
            spans.append(seq_spans)

        def as_tensor(values):
            return torch.tensor(values, dtype=torch.int64, device=self.device)

        return ForwardBatch(
            input_ids=as_tensor(input_ids),
            positions=as_tensor(positions),
            query_start=as_tensor(query_start),
            context_lens=as_tensor(context_lens),
            slot_mapping={k: as_tensor(v) for k, v in slots.items()},
            block_tables={k: self._pad_tables(v) for k, v in tables.items()},
            block_size=bs,
            logits_indices=as_tensor(logits_indices),
            mm_embeds=torch.cat(mm_embeds) if mm_embeds else None,
            mm_mask=torch.tensor(mm_mask, dtype=torch.bool, device=self.device) if mm_embeds else None,
            bidirectional_spans=spans,
        )

    def _pad_tables(self, tables: list[list[int]]) -> torch.Tensor:
        width = max((len(t) for t in tables), default=0) or 1
        padded = [t + [NO_BLOCK] * (width - len(t)) for t in tables]
        return torch.tensor(padded, dtype=torch.int64, device=self.device)  # [B, max_pages]

    def _images_in_chunk(self, seq: Sequence, lo: int, hi: int, mm_embeds: list) -> tuple[list[bool], list[tuple[int, int]]]:
        """Soft-token rows for the image tokens in [lo, hi) (appended to mm_embeds), the chunk's mask,
        and the image spans the chunk touches."""
        mask = [False] * (hi - lo)
        touched = [(s.start, s.end) for s in seq.image_spans if s.start < hi and s.end > lo]
        if not touched:
            return mask, []
        if seq.image_embeds is None:
            # Encoded once per request and kept: a preempted request is re-prefilled without re-encoding.
            seq.image_embeds = torch.cat(self.vision(seq.images))  # [all image tokens, H]
        offset = 0
        for span in seq.image_spans:
            a, b = max(span.start, lo), min(span.end, hi)
            if a < b:
                mm_embeds.append(seq.image_embeds[offset + a - span.start : offset + b - span.start])
                for p in range(a, b):
                    mask[p - lo] = True
            offset += span.end - span.start
        return mask, touched
