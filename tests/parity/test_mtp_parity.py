"""Speculative decoding with the MTP drafter against transformers' greedy output (tiny shapes, CPU).

The engines carry a tiny random drafter (ASSISTANT=random); whatever it proposes, greedy output must be
the target's own, token for token, for concurrent requests joining at different steps and through a
preemption, and every KV page must come back. The drafter must really have drafted (the counters).
Needs the speculative floor (gemma_runtime/speculative/: the engine's verify step and registry).
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import Gemma4AssistantForCausalLM, Gemma4ForConditionalGeneration

from engine_builder.convert import build_engine
from engine_builder.tiny.random_assistant import make_random_assistant
from engine_builder.tiny.random_checkpoint import make_tiny_checkpoint
from gemma_runtime.api import GenerateRequest, SamplingParams
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine
from tests.parity.conftest import SLIDING_WINDOW, hf_greedy, run_joining
from tests.parity.test_assistant_parity import hf_draft
from tests.recorded import recorded_calls

pytest.importorskip("gemma_runtime.speculative.registry", reason="the speculative floor is not in this tree")

NEW_TOKENS = 24


@pytest.fixture(scope="module", params=["moe", "dense"])
def mtp_tiny(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"mtp-{request.param}")
    ckpt = make_tiny_checkpoint(root / "ckpt", kind=request.param, seed=6, sliding_window=SLIDING_WINDOW)
    engine_dir = build_engine(str(ckpt), root / "engines", dtype="float32", progress=False, assistant="random")
    hf = Gemma4ForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    return engine_dir, hf


def text_prompt(n: int, seed: int, engine: LLMEngine) -> list[int]:
    """Random ids that are no image/audio markers (a stray placeholder without its image is refused)."""
    mm = engine.spec.multimodal
    markers = set(mm.placeholder_ids) | {mm.boi_token_id, mm.eoi_token_id} if mm else set()
    ids = [t for t in range(10, engine.spec.text.vocab_size) if t not in markers]
    rng = random.Random(seed)
    return [rng.choice(ids) for _ in range(n)]


def greedy() -> SamplingParams:
    return SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)


@pytest.mark.parametrize("graph_max", [0, 4], ids=["eager", "verify-buffers"])
def test_mtp_concurrent_requests_match_transformers(mtp_tiny, graph_max):
    """graph_max 4: decode and verify steps through the padded buffers of the CUDA graphs (run eagerly here)."""
    engine_dir, hf = mtp_tiny
    config = RuntimeConfig(
        block_size=4,
        max_num_batched_tokens=12,
        speculative="mtp",
        num_speculative_tokens=3,
        decode_graph_max_batch=graph_max,
    )
    engine = LLMEngine(engine_dir, config)
    verified = recorded_calls(engine.runner.verify_graphs)  # (batch, query_lens) per padded verify step
    rounds = recorded_calls(engine.speculation.drafter.graphs)  # the drafter's rounds through their buffers
    free_at_start = engine.blocks.num_free
    # one prompt past the sliding window from the start: the drafter reads a cut sliding cache
    prompts = {f"r{i}": text_prompt(n, 40 + i, engine) for i, n in enumerate([5, 3 * SLIDING_WINDOW, 11])}
    got = run_joining(engine, prompts, {"r0": 0, "r1": 2, "r2": 5}, greedy())
    for rid, prompt in prompts.items():
        assert got[rid] == hf_greedy(hf, prompt, NEW_TOKENS), rid
    assert engine.stats().spec_decode_drafted > 0
    assert (graph_max > 0) == bool(rounds)
    assert (graph_max > 0) == any(max(lens) > 1 for _, lens in verified)
    assert engine.blocks.num_free == free_at_start


@pytest.mark.parametrize("prompt_len", [SLIDING_WINDOW - 2, 3 * SLIDING_WINDOW], ids=["inside", "past-window"])
def test_first_drafts_are_transformers_drafts(mtp_tiny, tmp_path, prompt_len):
    """Right after the prefill the engine's drafter gets the prompt's last hidden state and the token
    sampled from it: its drafts are transformers' drafting round, token for token. Past the window too:
    the block manager keeps the drafter's one or two keys behind the target's window
    (speculative/registry.py kept_sliding_window)."""
    engine_dir, hf = mtp_tiny
    engine = LLMEngine(engine_dir, RuntimeConfig(block_size=4, speculative="mtp", num_speculative_tokens=3))
    folder = make_random_assistant(tmp_path / "drafter", engine.spec.text)  # what ASSISTANT=random converted
    hf_drafter = Gemma4AssistantForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    drafter, proposed = engine.speculation.drafter, []
    real_propose = drafter.propose
    drafter.propose = lambda requests: proposed.append(real_propose(requests)) or proposed[-1]
    prompt = text_prompt(prompt_len, 60, engine)
    engine.add_request(GenerateRequest("d", prompt, greedy()))
    while not any(d.token_ids for drafts in proposed for d in drafts):
        engine.step()
    _, _, want = hf_draft(hf, hf_drafter, prompt, 3)
    assert proposed[-1][0].token_ids == want


def test_every_drafting_round_past_the_window_is_transformers(mtp_tiny, tmp_path):
    """Each round of a long decode, the drafter's proposals equal transformers' round over the same
    tokens: the drafter's keys one or two behind the target's sliding window are still in their pages
    (speculative/registry.py kept_sliding_window), not reclaimed as the target alone would allow."""
    engine_dir, hf = mtp_tiny
    engine = LLMEngine(engine_dir, RuntimeConfig(block_size=4, speculative="mtp", num_speculative_tokens=2))
    folder = make_random_assistant(tmp_path / "drafter", engine.spec.text)
    hf_drafter = Gemma4AssistantForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    drafter, rounds = engine.speculation.drafter, []
    real_propose = drafter.propose

    def recording(requests):
        drafts = real_propose(requests)
        rounds.extend((list(r.token_ids), d.token_ids) for r, d in zip(requests, drafts) if d.token_ids)
        return drafts

    drafter.propose = recording
    engine.add_request(GenerateRequest("w", text_prompt(2 * SLIDING_WINDOW + 3, 61, engine), greedy()))
    while engine.has_unfinished():
        engine.step()
    assert len(rounds) >= 4
    for tokens, drafted in rounds:
        _, _, want = hf_draft(hf, hf_drafter, tokens[:-1], 2)
        assert drafted == want[: len(drafted)], len(tokens)  # fewer near max_tokens


@pytest.mark.parametrize("graph_max", [0, 4], ids=["eager", "verify-buffers"])
def test_mtp_through_preemption(mtp_tiny, graph_max):
    """Pages for about two sequences: one is preempted, its hidden state forgotten and made again."""
    engine_dir, hf = mtp_tiny
    config = RuntimeConfig(
        block_size=4,
        num_full_blocks=14,
        max_num_batched_tokens=16,
        max_model_len=64,
        speculative="mtp",
        num_speculative_tokens=2,
        decode_graph_max_batch=graph_max,
    )
    engine = LLMEngine(engine_dir, config)
    verified = recorded_calls(engine.runner.verify_graphs)
    free_at_start = engine.blocks.num_free
    prompts = {f"p{i}": text_prompt(9, 50 + i, engine) for i in range(3)}
    seqs = []
    got: dict[str, list[int]] = {rid: [] for rid in prompts}
    for rid, prompt in prompts.items():
        engine.add_request(GenerateRequest(rid, prompt, greedy()))
        seqs.append(engine.requests[rid].seq)
    while engine.has_unfinished():
        for out in engine.step():
            got[out.request_id].extend(out.token_ids)
    assert sum(s.num_preemptions for s in seqs) > 0, "the pool was meant to be too small for all three"
    for rid, prompt in prompts.items():
        assert got[rid] == hf_greedy(hf, prompt, NEW_TOKENS), rid
    assert engine.stats().spec_decode_drafted > 0
    assert (graph_max > 0) == any(max(lens) > 1 for _, lens in verified)
    assert engine.blocks.num_free == free_at_start
