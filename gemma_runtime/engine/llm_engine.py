"""The synchronous engine: add requests, step, collect outputs. One thread drives it (AsyncEngine's loop)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

from gemma_runtime.api import EngineStats, GenerateRequest, RequestOutput, Usage
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.resolve import resolve_config, runtime_dtype
from gemma_runtime.engine_format.spec import EngineSpec, read_generation_defaults
from gemma_runtime.engine_format.weights import load_weights
from gemma_runtime.executor.model_runner import LaunchedStep, ModelRunner, SampledToken
from gemma_runtime.executor.step_graphs import drafter_graph_sizes
from gemma_runtime.grammar.engine_hooks import StructuredDecoding
from gemma_runtime.inputs.detokenizer import IncrementalDetokenizer, TextStream
from gemma_runtime.inputs.processor import InputProcessor, PreparedInput
from gemma_runtime.scheduling.block_manager import BlockManager
from gemma_runtime.scheduling.prefix_cache import CachingBlockPool
from gemma_runtime.scheduling.scheduler import Scheduler
from gemma_runtime.scheduling.sequence import Sequence, SequenceStatus
from gemma_runtime.speculative.engine_hooks import Speculation
from gemma_runtime.speculative.protocol import DrafterContext
from gemma_runtime.speculative.registry import build_drafter, kept_sliding_window


@dataclass
class _RequestState:
    seq: Sequence
    detokenizer: IncrementalDetokenizer
    text: TextStream


class LLMEngine:
    def __init__(self, engine_dir: str | Path, config: RuntimeConfig | None = None):
        self.engine_dir = Path(engine_dir)
        self.spec = EngineSpec.load(self.engine_dir)
        self.tokenizer = PreTrainedTokenizerFast.from_pretrained(str(self.engine_dir))
        self.generation_defaults = read_generation_defaults(self.engine_dir)
        config = config or RuntimeConfig()
        # Weights first: on a GPU the KV pages get what memory the weights leave.
        self.parallel = None  # the tensor-parallel ranks, when there are several (gemma_runtime/parallel/)
        runner_spec = self.spec
        if config.tensor_parallel_size > 1:
            from gemma_runtime.parallel.launcher import TensorParallelGroup

            self.parallel = TensorParallelGroup(self.engine_dir, self.spec, config)
            weights, c, runner_spec = self.parallel.weights, self.parallel.config, self.parallel.local_spec
        else:
            weights = load_weights(self.engine_dir, torch.device(config.device), runtime_dtype(config, self.spec))
            c = resolve_config(config, self.spec)
        self.config = c
        self.device, self.dtype, self.max_model_len = c.device, c.dtype, c.max_model_len
        self.stop_token_ids = frozenset(self.spec.stop_token_ids)
        layer_types = {layer.type for layer in self.spec.text.layers}
        self.blocks = BlockManager(
            c.block_size,
            c.num_full_blocks,
            c.num_sliding_blocks,
            kept_sliding_window(self.spec, c.speculative),
            has_full="full" in layer_types,
            has_sliding="sliding" in layer_types,
            pool=CachingBlockPool if c.enable_prefix_caching else None,
        )
        self.scheduler = Scheduler(self.blocks, c.max_num_seqs, c.max_num_batched_tokens)
        self.runner = ModelRunner(runner_spec, weights, c, shard=self.parallel.shard if self.parallel else None)
        if self.parallel is not None:
            self.parallel.attach(self.runner)
        self.overlap = c.overlap_scheduling
        self.in_flight: LaunchedStep | None = None  # launched, its tokens not yet read (overlap only)
        self.inputs = InputProcessor(self.spec, self.tokenizer, c.max_model_len, c.default_image_soft_tokens)
        self.requests: dict[str, _RequestState] = {}
        self.structured = StructuredDecoding(self.tokenizer, self.spec.text.vocab_size, self.stop_token_ids)
        self.runner.constraints = self.structured
        self.speculation = None  # speculative decoding (gemma_runtime/speculative/), when configured
        if c.speculative != "off":
            ctx = DrafterContext(
                str(self.engine_dir),
                self.spec,
                c,
                c.num_speculative_tokens,
                self.runner.kv_caches,
                self.runner.text.w["embed_tokens.weight"],
                drafter_graph_sizes(c),
            )
            drafter = build_drafter(c.speculative, ctx)
            self.speculation = Speculation(drafter, c.num_speculative_tokens, c.speculative_max_batch)

    # --- requests ----------------------------------------------------------------------------------

    def prepare(self, request: GenerateRequest) -> PreparedInput:
        """Tokenization, image preprocessing and grammar compilation; safe to call from any thread."""
        grammar = self.structured.prepare(request)
        prepared = self.inputs.process(request)
        return replace(prepared, grammar=grammar) if grammar is not None else prepared

    def add_request(self, request: GenerateRequest, prepared: PreparedInput | None = None) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already running")
        prepared = prepared or self.prepare(request)
        p = request.sampling
        generator = torch.Generator(device=self.device).manual_seed(p.seed) if p.seed is not None else None
        seq = Sequence(
            request.request_id,
            prepared.token_ids,
            p,
            stop_token_ids=frozenset() if p.ignore_eos else self.stop_token_ids | set(p.stop_token_ids),
            images=prepared.images,
            image_spans=prepared.image_spans,
            generator=generator,
            image_hashes=list(prepared.image_hashes),
            max_total_tokens=min(len(prepared.token_ids) + p.max_tokens, self.max_model_len),
        )
        self.structured.attach(seq, request, prepared.grammar)
        detok = IncrementalDetokenizer(self.tokenizer, prepared.token_ids, p.skip_special_tokens)
        self.requests[request.request_id] = _RequestState(seq, detok, TextStream(p.stop, p.include_stop_str_in_output))
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> RequestOutput | None:
        state = self.requests.pop(request_id, None)
        if state is None:
            return None
        self.scheduler.remove(state.seq)
        self._release(state.seq)
        state.seq.status = SequenceStatus.FINISHED
        return RequestOutput(request_id, (), "", finished=True, finish_reason="abort", usage=self._usage(state.seq))

    def abort_all(self) -> list[str]:
        """Aborts every request (after a failed step, whose state nobody can trust); their ids."""
        ids = list(self.requests)
        for request_id in ids:
            self.abort(request_id)
        return ids

    def _release(self, seq: Sequence) -> None:
        self.runner.release(seq)
        if self.speculation is not None:
            self.speculation.release(seq)

    def healthy(self) -> bool:
        """False once a tensor-parallel rank is gone (the engine cannot step any more)."""
        return self.parallel is None or self.parallel.healthy

    def close(self) -> None:
        """Stops the other tensor-parallel ranks (nothing to do on one)."""
        if self.parallel is not None:
            self.parallel.close()

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work() or self.in_flight is not None

    def stats(self) -> EngineStats:
        prefix = self.scheduler.prefix.stats if self.scheduler.prefix is not None else None
        spec = self.speculation.counters if self.speculation is not None else None
        return EngineStats(
            len(self.scheduler.running),
            len(self.scheduler.waiting),
            self.blocks.num_total,
            self.blocks.num_free,
            prefix.queries if prefix else 0,
            prefix.hits if prefix else 0,
            spec.drafted if spec else 0,
            spec.accepted if spec else 0,
            spec.verifies if spec else 0,
            spec.emitted if spec else 0,
        )

    # --- the step ----------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """One scheduling step. With overlap, returns the previous step's outputs: this step is launched
        first, so the GPU runs it while the host detokenizes and checks stops for the previous one."""
        try:
            return self._step()
        except Exception:
            self.in_flight = None  # its samples belong to requests the caller is about to fail
            raise

    def _step(self) -> list[RequestOutput]:
        outputs: list[RequestOutput] = []
        if self.in_flight is not None and self.in_flight.needs_host_tokens:
            outputs += self._resolve(self.in_flight)
            self.in_flight = None
        if self.speculation is not None:
            self.speculation.draft(self.scheduler.running, self.runner.hidden_of)
        plan = self.scheduler.schedule()
        for seq in plan.preempted:
            self.runner.forget_hidden(seq)
            if self.speculation is not None:
                self.speculation.release(seq)
        launched = None
        if not plan.is_empty:
            launched = self.runner.launch(plan.scheduled)
            for item in plan.scheduled:
                item.seq.num_computed += item.num_new
            for seq in launched.seqs:
                seq.num_pending += 1
        previous, self.in_flight = self.in_flight, launched
        if previous is not None:
            outputs += self._resolve(previous)
        if launched is not None and launched.awaiting_sample:
            # a constrained row's token of the previous step was unread at launch: its grammar has now
            # taken it, and the mask is built while the device still runs this step's forward
            self.runner.sample(launched, self.structured.mask(launched.seqs))
        if not self.overlap and self.in_flight is not None:
            outputs += self._resolve(self.in_flight)
            self.in_flight = None
        return outputs

    def _resolve(self, launched: LaunchedStep) -> list[RequestOutput]:
        outputs = []
        sampled_tokens = self.runner.resolve(launched)
        for seq in launched.seqs:
            seq.num_pending -= 1
        for v in launched.verified:  # before the tokens: a stop among them frees the pages
            if not v.seq.is_finished:
                self.speculation.verified(v.seq, self.blocks, v.num_drafts, v.num_emitted)
        for sampled in sampled_tokens:
            seq = sampled.seq
            state = self.requests.get(seq.request_id)
            if state is None or state.seq is not seq:
                continue  # finished (by the step before) or aborted while this step ran: the token is dropped
            outputs.append(self._process(sampled))
        return outputs

    def _process(self, sampled: SampledToken) -> RequestOutput:
        seq, token = sampled.seq, sampled.token_id
        state = self.requests[seq.request_id]
        seq.output_token_ids.append(token)
        if seq.grammar is not None:
            seq.grammar.accept(token)
        p = seq.sampling
        finish_reason, stop_reason = None, None
        n_out = len(seq.output_token_ids)
        if token in seq.stop_token_ids and n_out > p.min_tokens:
            finish_reason, stop_reason = "stop", token
        else:
            hit = state.text.append(state.detokenizer.add(token))
            if hit is not None and n_out > p.min_tokens:
                finish_reason, stop_reason = "stop", hit
            elif n_out >= p.max_tokens or seq.num_resolved_tokens >= self.max_model_len:
                finish_reason = "length"
        if finish_reason is not None:
            if stop_reason is None or isinstance(stop_reason, int):
                state.text.append(state.detokenizer.flush())
            del self.requests[seq.request_id]
            self.scheduler.remove(seq)
            self._release(seq)
            seq.status = SequenceStatus.FINISHED
        return RequestOutput(
            request_id=seq.request_id,
            token_ids=(token,),
            text=state.text.take_delta(final=finish_reason is not None),
            logprobs=(sampled.logprob,) if sampled.logprob is not None else None,
            finished=finish_reason is not None,
            finish_reason=finish_reason,
            stop_reason=stop_reason,
            usage=self._usage(seq) if finish_reason is not None else None,
        )

    @staticmethod
    def _usage(seq: Sequence) -> Usage:
        return Usage(seq.num_prompt_tokens, len(seq.output_token_ids), seq.num_cached_tokens or 0)

    def generate(self, requests: list[GenerateRequest]) -> dict[str, list[int]]:
        """Offline helper: runs the requests to completion, returns each one's output token ids."""
        for r in requests:
            self.add_request(r)
        out: dict[str, list[int]] = {r.request_id: [] for r in requests}
        while self.has_unfinished():
            for o in self.step():
                out[o.request_id].extend(o.token_ids)
        return out
