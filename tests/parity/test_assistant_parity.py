"""The MTP drafter against transformers' Gemma4AssistantForCausalLM (float32, CPU).

A tiny random target and drafter, both made by transformers; transformers' side is its own drafting loop
(SinglePositionMultiTokenCandidateGenerator's) fed the target's real `shared_kv_states` and last hidden
state; ours reads the KV pages our runtime's prefill wrote for the same prompt. The prompt is longer than
the sliding window, so the drafter's sliding layers see a cut window.
"""

from __future__ import annotations

import pytest
import torch
from transformers import Gemma4AssistantForCausalLM, Gemma4ForConditionalGeneration

from engine_builder.convert import build_engine
from engine_builder.tiny.random_assistant import make_random_assistant
from engine_builder.tiny.random_checkpoint import make_tiny_checkpoint
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine
from gemma_runtime.engine_format.spec import EngineSpec
from gemma_runtime.model.assistant import DraftContext, load_assistant
from gemma_runtime.scheduling.scheduler import ScheduledSeq
from gemma_runtime.scheduling.sequence import Sequence
from tests.parity.conftest import SLIDING_WINDOW
from tests.parity.test_text_parity import greedy, random_prompt, rel_err

DRAFT_STEPS = 3


@pytest.fixture(scope="module", params=["plain_head", "ordered_embeddings"])
def drafted(request, tmp_path_factory):
    """(engine dir, HF target, HF drafter): the drafter goes in through ASSISTANT=<folder> (ordered
    embeddings: a masked LM head) or ASSISTANT=random (a plain tied head)."""
    root = tmp_path_factory.mktemp("assistant")
    ckpt = make_tiny_checkpoint(root / "ckpt", kind="moe", seed=2, sliding_window=SLIDING_WINDOW)
    if request.param == "ordered_embeddings":
        target = EngineSpec.load(build_engine(str(ckpt), root / "plain", dtype="float32", progress=False)).text
        folder = make_random_assistant(root / "drafter", target, seed=3, ordered_embeddings=True)
        engine_dir = build_engine(str(ckpt), root / "engines", dtype="float32", progress=False, assistant=str(folder))
        hf_drafter = Gemma4AssistantForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    else:
        engine_dir = build_engine(str(ckpt), root / "engines", dtype="float32", progress=False, assistant="random")
        spec = EngineSpec.load(engine_dir)
        folder = make_random_assistant(root / "drafter", spec.text)  # what `random` converted: same seed
        hf_drafter = Gemma4AssistantForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    hf = Gemma4ForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    return engine_dir, hf, hf_drafter


@torch.inference_mode()
def hf_draft(hf, drafter, prompt: list[int], steps: int):
    """transformers' drafting round right after the prefill: the target's argmax t at position L, then
    `steps` drafter calls from position L over the target's shared KV of positions 0..L-1."""
    out = hf(input_ids=torch.tensor([prompt]), output_hidden_states=True, return_shared_kv_states=True)
    tok = out.logits[:, -1:].argmax(-1)  # [1, 1]
    hidden = out.hidden_states[-1][:, -1:]  # [1, 1, B] final-normed
    mask = torch.ones(1, len(prompt) + 1, dtype=torch.long)  # generate's mask covers t too
    logits, tokens = [], []
    for _ in range(steps):
        embeds = torch.cat([hf.get_input_embeddings()(tok), hidden], dim=-1)  # [1, 1, 2B]
        o = drafter(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=torch.tensor([[len(prompt)]]),
            shared_kv_states=out.shared_kv_states,
        )
        tok, hidden = o.logits.argmax(-1), o.last_hidden_state
        logits.append(o.logits[0, 0].float())
        tokens.append(int(tok))
    return int(out.logits[0, -1].argmax()), torch.stack(logits), tokens


@torch.inference_mode()
def our_draft(engine: LLMEngine, prompt: list[int], steps: int):
    """Our prefill writes the prompt's KV pages; the drafter reads them from the last token's position."""
    seq = Sequence("x", prompt, greedy(), frozenset())
    engine.blocks.allocate(seq.block_tables, 0, len(prompt))
    batch = engine.runner._build_batch([ScheduledSeq(seq, len(prompt))])
    text = engine.runner.text
    hidden = text.forward(batch, engine.runner.kv_caches)  # [1, B]: the last row's final-normed state
    tok = text.logits(hidden).argmax(-1)  # [1]
    drafter = load_assistant(engine.engine_dir, engine.spec, text, engine.runner.device)
    ctx = DraftContext(torch.tensor([len(prompt)]), batch.block_tables, batch.block_size)
    draft = drafter.propose(tok, hidden, ctx, engine.runner.kv_caches, steps)
    return int(tok), draft.logits[0], draft.tokens[0].tolist()


@pytest.mark.parametrize("length", [5, 3 * SLIDING_WINDOW + 5])
def test_drafter_logits_match_transformers(drafted, length):
    engine_dir, hf, hf_drafter = drafted
    engine = LLMEngine(engine_dir, RuntimeConfig(block_size=4))
    prompt = random_prompt(length, seed=length, vocab=engine.spec.text.vocab_size)
    ref_tok, ref_logits, ref_tokens = hf_draft(hf, hf_drafter, prompt, DRAFT_STEPS)
    tok, logits, tokens = our_draft(engine, prompt, DRAFT_STEPS)
    assert tok == ref_tok
    assert logits.shape == ref_logits.shape == (DRAFT_STEPS, engine.spec.text.vocab_size)
    assert rel_err(logits, ref_logits) < 1e-4
    assert tokens == ref_tokens
    assert not torch.allclose(logits[0], logits[1])  # each step feeds the next: a dead loop would repeat
