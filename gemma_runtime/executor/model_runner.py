"""The only place that turns scheduled sequences into tensors: builds the ForwardBatch, runs the vision
tower for new images, the decoder (through a captured CUDA graph for decode and speculative verify
batches), and the sampler.

A step is launched and resolved separately. `launch` queues all of its device work and returns at once,
its sampled tokens still on the device; `resolve` reads them on the host. Between the two the engine
may schedule and launch the next step: a sequence's newest token then goes into the next batch straight
from the previous step's token tensor (a device gather), never through the host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gemma_runtime.api import TokenLogprob
from gemma_runtime.config import ResolvedConfig
from gemma_runtime.engine_format.spec import EngineSpec
from gemma_runtime.executor.device_block_tables import DeviceBlockTables
from gemma_runtime.executor.device_io import HostCopy, to_device
from gemma_runtime.executor.sampler import SampledBatch, sample_on_device
from gemma_runtime.executor.step_graphs import build_step_graphs
from gemma_runtime.executor.verify_rows import Verified, rejection_groups, sampling_rows, split_runs
from gemma_runtime.grammar.logits import TokenMask
from gemma_runtime.model.forward_batch import ForwardBatch
from gemma_runtime.model.gemma4 import Gemma4TextModel
from gemma_runtime.scheduling.scheduler import ScheduledSeq
from gemma_runtime.scheduling.sequence import Sequence
from gemma_runtime.speculative.grammar_drafts import verify_mask


@dataclass(frozen=True)
class SampledToken:
    seq: Sequence
    token_id: int
    logprob: TokenLogprob | None


@dataclass
class LaunchedStep:
    """A step whose device work is queued: the sequences that sample, in row order, and their samples."""

    seqs: list[Sequence]
    sampled: SampledBatch | None
    host_copy: HostCopy | None
    unsampled: tuple | None = None  # (logits, rows) of a step whose sampling waits for its token mask
    # speculation: each sequence's drafts verified this step (len + 1 rows each; [] for a plain row), the
    # step's hidden states [rows, H] when kept for drafters, and what each sequence verified (resolve)
    drafts: list[list[int]] = field(default_factory=list)
    hidden: torch.Tensor | None = None
    verified: list[Verified] = field(default_factory=list)

    @property
    def awaiting_sample(self) -> bool:
        return self.unsampled is not None

    @property
    def needs_host_tokens(self) -> bool:
        """Penalties count a sequence's generated tokens on the host, so its next step needs them resolved."""
        return any(s.sampling.presence_penalty or s.sampling.frequency_penalty for s in self.seqs)


class ModelRunner:
    def __init__(
        self,
        spec: EngineSpec,
        weights: dict[str, torch.Tensor],
        config: ResolvedConfig,
        shard: Callable[[Gemma4TextModel], None] | None = None,
    ):
        """config.decode_graph_max_batch > 0 runs decode batches up to that size through fixed-size padded
        buffers, captured as CUDA graphs when config.capture_graphs (on the CPU they run eagerly, which is
        how tests check the padding); with speculation, verify batches up to speculative_max_batch
        sequences too, and a short prompt's step up to config.prefill_graph_max_tokens (step_graphs.py). Each KV pool gets one extra page past its last: the scratch
        page that padding rows write to, never handed to a sequence. `shard` changes the text model before
        any graph captures it (tensor parallel: its backends that all-reduce, parallel/sharded_layers.py)."""
        self.spec = spec
        self.config = config
        self.device = device = config.device
        self.block_size = config.block_size
        text_weights = {k: v for k, v in weights.items() if not k.startswith("vision.")}
        placeholders = spec.multimodal.placeholder_ids if spec.multimodal else ()
        self.text = Gemma4TextModel(
            spec.text, text_weights, device, placeholders, spec.tokens.pad_token_id, config.moe_side_stream
        )
        if shard is not None:
            shard(self.text)
        self.vision = None
        if spec.vision is not None:
            from gemma_runtime.model.vision_encoder import VisionEncoder

            self.vision = VisionEncoder(spec.vision, spec.text.hidden_size, config.dtype).to(device)
            self.vision.load_state_dict({k[len("vision.") :]: v for k, v in weights.items() if k.startswith("vision.")})
        self.kv_caches = self._allocate_kv(config.dtype, config.num_full_blocks, config.num_sliding_blocks)
        self.default_generator = torch.Generator(device=device).manual_seed(config.seed)
        self.constraints = None  # set by the engine: lags(scheduled) and mask(seqs) of constrained decoding
        # the previous launch's sampled tokens [S] and each sampling sequence's row in them
        self._last_tokens: torch.Tensor | None = None
        self._last_rows: dict[int, int] = {}
        # speculation: each sequence's final-normed hidden state [H] at the row that sampled its newest
        # token, what a drafter reads (speculative/protocol.py); kept only when speculating
        self.keep_hidden = config.speculative != "off"
        self.hidden: dict[str, torch.Tensor] = {}
        self.block_tables = DeviceBlockTables(config.max_num_seqs, config.max_pages_per_seq, device)
        self.step_graphs = build_step_graphs(self.text, self.kv_caches, config, spec.tokens.pad_token_id)

    def _allocate_kv(self, dtype, num_full_blocks, num_sliding_blocks) -> list[tuple[torch.Tensor, torch.Tensor]]:
        caches = []
        for layer in self.spec.text.layers:
            blocks = (num_full_blocks if layer.type == "full" else num_sliding_blocks) + 1  # + the scratch page
            shape = (blocks * self.block_size, layer.num_kv_heads, layer.head_dim)  # [slots, kv_heads, head_dim]
            caches.append(
                (
                    torch.zeros(shape, dtype=dtype, device=self.device),
                    torch.zeros(shape, dtype=dtype, device=self.device),
                )
            )
        return caches

    @torch.inference_mode()
    def launch(self, scheduled: list[ScheduledSeq]) -> LaunchedStep:
        """Queues the step's forward and sampling; returns without waiting for the device. With
        `constraints` (the engine's StructuredDecoding) the sampling rows get the grammar's token mask;
        when a constrained row's newest token is still unread, only the forward is queued and the
        caller finishes the step with `sample` once it has read that token."""
        batch = self._build_batch(scheduled)
        hidden = self._forward(batch, scheduled)
        sampling = [s for s in scheduled if s.completes_prompt]
        seqs = [s.seq for s in sampling]
        if not seqs:
            self._last_tokens, self._last_rows = None, {}
            return LaunchedStep([], None, None)
        drafts = [s.seq.draft_token_ids[: s.num_draft] for s in sampling]
        logits = self.text.logits(hidden)  # [rows, V]: one row per sequence plus one per draft
        step = LaunchedStep(seqs, None, None, unsampled=(logits, sampling_rows(seqs, drafts)), drafts=drafts)
        step.hidden = hidden if self.keep_hidden else None
        if self.constraints is None:
            self.sample(step)
        elif any(drafts):
            self.sample(step, verify_mask(seqs, drafts, self.spec.text.vocab_size))
        elif not self.constraints.lags(scheduled):
            self.sample(step, self.constraints.mask(seqs))
        return step

    @property
    def graphs(self):
        """The decode graphs (None when off)."""
        return self.step_graphs.get("decode")

    @property
    def verify_graphs(self):
        return self.step_graphs.get("verify")

    @property
    def prefill_graphs(self):
        return self.step_graphs.get("prefill")

    def _forward(self, batch: ForwardBatch, scheduled: list[ScheduledSeq]) -> torch.Tensor:
        """The decoder's final-normed hidden states of the batch's logits rows: through the first step
        graphs that fit the batch (decode, verify, a short prompt: step_graphs.py), else eagerly."""
        query_lens = [item.num_new + item.num_draft for item in scheduled]
        for graphs in self.step_graphs.values():
            if graphs.fits(batch, query_lens):
                return graphs.run(batch, query_lens)
        return self.text.forward(batch, self.kv_caches)

    @torch.inference_mode()
    def sample(self, step: LaunchedStep, mask: TokenMask | None = None) -> None:
        """Queues the sampling of a launched step (with the grammar's mask) and its copy to the host."""
        (logits, rows), step.unsampled = step.unsampled, None
        groups = rejection_groups(step.seqs, step.drafts, self.default_generator) if any(step.drafts) else None
        sampled = sample_on_device(logits, rows, self.default_generator, mask, groups)
        self._last_tokens, self._last_rows = sampled.tokens, {id(seq): i for i, seq in enumerate(step.seqs)}
        step.sampled, step.host_copy = sampled, sampled.start_host_copy()

    def resolve(self, step: LaunchedStep) -> list[SampledToken]:
        """Waits for the step's samples and returns them on the host."""
        if step.sampled is None:
            return []
        tokens, logprobs = step.sampled.to_host(step.host_copy)
        if not any(step.drafts):
            if step.hidden is not None:
                self._keep_hidden(step.seqs, step.hidden, list(range(len(step.seqs))))
            return [SampledToken(seq, t, lp) for seq, t, lp in zip(step.seqs, tokens, logprobs)]
        out, last_rows = [], []
        for seq, ds, run, run_logprobs, last_row in split_runs(step.seqs, step.drafts, tokens, logprobs):
            out.extend(SampledToken(seq, t, lp) for t, lp in zip(run, run_logprobs))
            if ds:
                step.verified.append(Verified(seq, len(ds), len(run)))
            last_rows.append(last_row)
        if step.hidden is not None:
            self._keep_hidden(step.seqs, step.hidden, last_rows)
        return out

    def _keep_hidden(self, seqs: list[Sequence], hidden: torch.Tensor, rows: list[int]) -> None:
        """Each sequence's hidden state at its row, gathered in one copy (the step's buffer may be reused,
        e.g. a CUDA graph's) rather than one small copy per sequence."""
        kept = hidden[rows]  # [S, H]
        for seq, row in zip(seqs, kept):
            self.hidden[seq.request_id] = row  # [H]

    def hidden_of(self, seq: Sequence) -> torch.Tensor | None:
        """The sequence's stored hidden state for a drafter (None before its first sampled token)."""
        return self.hidden.get(seq.request_id)

    def release(self, seq: Sequence) -> None:
        """The sequence is done: its row of the device block tables goes to the next one."""
        self.block_tables.release(seq.request_id)
        self.hidden.pop(seq.request_id, None)

    def forget_hidden(self, seq: Sequence) -> None:
        """Preempted: its hidden state is stale until its prefill completes again."""
        self.hidden.pop(seq.request_id, None)

    # --- batch construction ------------------------------------------------------------------------

    def _build_batch(self, scheduled: list[ScheduledSeq]) -> ForwardBatch:
        bs = self.block_size
        input_ids, positions, query_start, context_lens, logits_indices = [], [], [0], [], []
        slots = {"full": [], "sliding": []}
        mm_embeds, mm_rows, spans, span_bounds = [], [], [], []
        pending_at, pending_from = [], []  # batch rows whose token is still on the device, and where it is
        for item in scheduled:
            seq, lo = item.seq, item.seq.num_computed
            hi = lo + item.num_new
            known = seq.num_resolved_tokens
            input_ids.extend(seq.tokens(lo, min(hi, known)))
            for _ in range(max(lo, known), hi):
                pending_at.append(len(input_ids))
                pending_from.append(self._pending_row(seq))
                input_ids.append(self.spec.tokens.pad_token_id)
            # speculative drafts follow the newest token: their rows verify them (executor/verify_rows.py)
            input_ids.extend(seq.draft_token_ids[: item.num_draft])
            end = hi + item.num_draft
            positions.extend(range(lo, end))
            for kind in ("full", "sliding"):
                table = getattr(seq.block_tables, kind)
                slots[kind].extend(table[p // bs] * bs + p % bs if table else -1 for p in range(lo, end))
            query_start.append(query_start[-1] + end - lo)
            context_lens.append(end)
            if item.completes_prompt:
                logits_indices.extend(range(query_start[-1] - 1 - item.num_draft, query_start[-1]))
            seq_rows, seq_spans = self._images_in_chunk(seq, lo, hi, mm_embeds)
            mm_rows.extend(query_start[-2] + r for r in seq_rows)
            spans.append(seq_spans)
            span_bounds.extend(next(((a, b) for a, b in seq_spans if a <= p < b), (0, 0)) for p in range(lo, end))

        def as_tensor(values):
            return to_device(values, torch.int64, self.device)

        ids = as_tensor(input_ids)
        if pending_at:
            ids.index_copy_(0, as_tensor(pending_at), self._last_tokens.index_select(0, as_tensor(pending_from)))
        return ForwardBatch(
            input_ids=ids,
            positions=as_tensor(positions),
            query_start=as_tensor(query_start),
            context_lens=as_tensor(context_lens),
            slot_mapping={k: as_tensor(v) for k, v in slots.items()},
            block_tables=self.block_tables.gather(
                [i.seq.request_id for i in scheduled], [i.seq.block_tables for i in scheduled]
            ),
            block_size=bs,
            logits_indices=as_tensor(logits_indices),
            mm_embeds=torch.cat(mm_embeds) if mm_embeds else None,
            mm_rows=as_tensor(mm_rows) if mm_embeds else None,
            bidirectional_spans=spans,
            span_bounds=as_tensor(span_bounds) if any(spans) else None,  # [T, 2]
            max_query_len=max(item.num_new + item.num_draft for item in scheduled),
        )

    def _pending_row(self, seq: Sequence) -> int:
        # a pending token was always sampled by the launch just before: the engine resolves every step's
        # tokens before it schedules the step after next
        row = self._last_rows.get(id(seq))
        if row is None:
            raise RuntimeError(f"request {seq.request_id!r} has a pending token the last step did not sample")
        return row

    def _images_in_chunk(
        self, seq: Sequence, lo: int, hi: int, mm_embeds: list
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """Soft-token rows for the image tokens in [lo, hi) (appended to mm_embeds), their offsets in the
        chunk, and the image spans the chunk touches."""
        rows: list[int] = []
        touched = [(s.start, s.end) for s in seq.image_spans if s.start < hi and s.end > lo]
        if not touched:
            return rows, []
        if seq.image_embeds is None:
            # Encoded once per request and kept: a preempted request is re-prefilled without re-encoding.
            seq.image_embeds = torch.cat(self.vision(seq.images))  # [all image tokens, H]
        offset = 0
        for span in seq.image_spans:
            a, b = max(span.start, lo), min(span.end, hi)
            if a < b:
                mm_embeds.append(seq.image_embeds[offset + a - span.start : offset + b - span.start])
                rows.extend(range(a - lo, b - lo))
            offset += span.end - span.start
        return rows, touched
