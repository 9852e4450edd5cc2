"""The taught tiny model: transformers' greedy decoding reproduces every corpus reply, the served engine
writes the same, and training is deterministic under a seed."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer, Gemma4ForConditionalGeneration

from engine_builder.tiny.taught import (
    TAUGHT_IMAGE_SOFT_TOKENS,
    encode,
    greedy_reply,
    make_taught_tiny_model,
    render_prompt,
    stop_token_ids,
    weights_digest,
)
from engine_builder.tiny.taught_corpus import TAUGHT_CONVERSATIONS

NAMES = [c["name"] for c in TAUGHT_CONVERSATIONS]


@pytest.fixture(scope="session")
def taught(taught_checkpoint_dir):
    """The session's one build: (checkpoint dir, the model loaded back by transformers, tokenizer)."""
    ckpt = taught_checkpoint_dir
    model = Gemma4ForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    return ckpt, model, tokenizer


def test_corpus_covers_every_structure():
    replies = {c["name"]: c["reply"] for c in TAUGHT_CONVERSATIONS}
    assert replies["math_thinking"].startswith("<|channel>thought\n")
    assert replies["tool_call"].count("<|tool_call>") == 1
    assert replies["parallel_tool_calls"].count("<|tool_call>") == 2
    assert any(m["role"] == "tool" for m in TAUGHT_CONVERSATIONS[NAMES.index("after_tool_response")]["messages"])
    assert TAUGHT_CONVERSATIONS[NAMES.index("image")]["images"]
    for reply in replies.values():
        assert reply.endswith("<turn|>") or (reply.endswith("<|tool_response>") and "<|tool_call>" in reply)


@pytest.mark.parametrize("name", NAMES)
def test_transformers_greedy_reproduces_reply(taught, name):
    ckpt, model, tokenizer = taught
    conversation = TAUGHT_CONVERSATIONS[NAMES.index(name)]
    example = encode(tokenizer, model.config, conversation)
    stops = json.loads((ckpt / "generation_config.json").read_text())["eos_token_id"]
    assert stops == stop_token_ids(tokenizer)
    assert greedy_reply(model, tokenizer, model.config, example, stops) == conversation["reply"]


def test_saved_checkpoint_records_the_build(taught):
    ckpt, model, tokenizer = taught
    info = json.loads((ckpt / "taught.json").read_text())
    assert info["verified"] and info["conversations"] == NAMES
    assert info["weights_sha256"] == weights_digest(model)  # what was saved is what was trained
    assert info["image_soft_tokens"] == TAUGHT_IMAGE_SOFT_TOKENS
    assert (ckpt / "chat_template.jinja").is_file()


def test_served_engine_writes_the_replies(taught, taught_engine_dir):
    """The runtime, built from the checkpoint, greedy-decodes the same replies from the prompts the server renders."""
    from gemma_runtime.api import GenerateRequest, SamplingParams
    from gemma_runtime.config import RuntimeConfig
    from gemma_runtime.engine.llm_engine import LLMEngine

    ckpt, _, tokenizer = taught
    engine = LLMEngine(taught_engine_dir, RuntimeConfig(max_num_seqs=16))
    requests = [
        GenerateRequest(
            c["name"],
            render_prompt(tokenizer, c),
            SamplingParams(max_tokens=len(tokenizer.encode(c["reply"])) + 8),
            images=tuple(spec.image() for spec in c.get("images", ())),
        )
        for c in TAUGHT_CONVERSATIONS
    ]
    out = engine.generate(requests)
    got = {name: tokenizer.decode(ids, skip_special_tokens=False) for name, ids in out.items()}
    assert got == {c["name"]: c["reply"] for c in TAUGHT_CONVERSATIONS}


def test_training_is_deterministic():
    """Same seed, same weights (a few steps suffice to show it); another seed, other weights."""
    digests = [weights_digest(make_taught_tiny_model(steps=3, seed=s)[0]) for s in (7, 7, 8)]
    assert digests[0] == digests[1]
    assert digests[0] != digests[2]
