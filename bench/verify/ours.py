"""Our engine's side of `make verify`: greedy steps from each prompt, then every position's logits.

The greedy steps run through the engine as served (scheduler, KV pages, sampler). The logits are then
computed teacher-forced over prompt + steps in one prefill of one sequence, with every row kept (the
served path keeps only the last row), through the same model runner, batch builder and vision tower.
"""

from __future__ import annotations

import torch

from gemma_runtime.api import GenerateRequest, SamplingParams
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine
from gemma_runtime.inputs.processor import PreparedInput
from gemma_runtime.scheduling.scheduler import ScheduledSeq
from gemma_runtime.scheduling.sequence import Sequence

from .prompts import VerifyPrompt, perplexity_text
from .scored import PromptTokens, Scored

MAX_MODEL_LEN = 4096  # the prompts and the text are a few hundred tokens; fewer KV pages to allocate


def load_engine(engine_dir, device: str, dtype: str | None = None) -> LLMEngine:
    config = RuntimeConfig(
        device=device,
        dtype=dtype,
        max_num_seqs=1,
        max_model_len=MAX_MODEL_LEN,
        enable_prefix_caching=False,  # scoring allocates its own pages, outside the prefix cache
        decode_graph_max_batch=0,  # no graphs to capture for a handful of steps
        overlap_scheduling=False,
    )
    return LLMEngine(engine_dir, config)


def greedy_tokens(engine: LLMEngine, prompt: VerifyPrompt, steps: int) -> tuple[PromptTokens, PreparedInput]:
    """The prompt as the served path prepares it (images expanded, preprocessed), and `steps` greedy tokens."""
    request = GenerateRequest(
        prompt.name, prompt.render(engine.tokenizer), SamplingParams(max_tokens=steps, temperature=0.0), prompt.images
    )
    prepared = engine.prepare(request)
    continuation = engine.generate([request])[prompt.name] if steps else []
    ids = tuple(prepared.token_ids) + tuple(continuation)
    budget = engine.config.default_image_soft_tokens
    return PromptTokens(prompt.name, ids, len(prepared.token_ids), prompt.images, budget), prepared


def text_tokens(engine: LLMEngine, name: str, text: str) -> tuple[PromptTokens, PreparedInput]:
    ids = engine.tokenizer.encode(text, add_special_tokens=False)  # the rendered text starts with <bos>
    prepared = engine.prepare(GenerateRequest(name, ids))
    return PromptTokens(name, tuple(ids), len(ids), (), engine.config.default_image_soft_tokens), prepared


@torch.inference_mode()
def teacher_forced(engine: LLMEngine, tokens: PromptTokens, prepared: PreparedInput) -> Scored:
    """[n, V] logits after every prefix of tokens.token_ids: one prefill, every row kept."""
    ids = list(tokens.token_ids)
    n = len(ids)
    seq = Sequence(
        f"score-{tokens.name}",
        ids,
        SamplingParams(max_tokens=1),
        frozenset(),
        images=prepared.images,
        image_spans=prepared.image_spans,
        max_total_tokens=n + 1,
    )
    engine.blocks.allocate(seq.block_tables, 0, n)
    try:
        batch = engine.runner._build_batch([ScheduledSeq(seq, n)])
        batch.logits_indices = torch.arange(n, device=batch.input_ids.device)  # [n]: every row, not the last
        text = engine.runner.text
        logits = text.logits(text.forward(batch, engine.runner.kv_caches))  # [n, V]
    finally:
        engine.blocks.free(seq.block_tables)
        engine.runner.release(seq)
    return Scored(tokens, logits.float().cpu())


def run_ours(engine: LLMEngine, prompts: tuple[VerifyPrompt, ...], steps: int) -> list[Scored]:
    """Each prompt's Scored, then the perplexity text's (named "perplexity text"), in that order."""
    scored = [teacher_forced(engine, *greedy_tokens(engine, p, steps)) for p in prompts]
    scored.append(teacher_forced(engine, *text_tokens(engine, "perplexity text", perplexity_text(engine.tokenizer))))
    return scored
