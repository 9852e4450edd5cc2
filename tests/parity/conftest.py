"""Tiny random Gemma 4 checkpoints (MoE and dense), their float32 engines, and the transformers reference."""

from __future__ import annotations

import pytest
import torch
from transformers import Gemma4ForConditionalGeneration

from engine_builder.convert import build_engine
from engine_builder.tiny.random_checkpoint import make_tiny_checkpoint
from gemma_runtime.api import GenerateRequest, SamplingParams

SLIDING_WINDOW = 8


@pytest.fixture(scope="session", params=["moe", "dense"])
def tiny(request, tmp_path_factory):
    """(kind, checkpoint dir, engine dir, HF model) for one tiny shape."""
    kind = request.param
    root = tmp_path_factory.mktemp(f"tiny-{kind}")
    ckpt = make_tiny_checkpoint(root / "ckpt", kind=kind, seed=1, sliding_window=SLIDING_WINDOW)
    engine_dir = build_engine(str(ckpt), root / "engines", dtype="float32", progress=False)
    hf = Gemma4ForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    return kind, ckpt, engine_dir, hf


@torch.inference_mode()
def hf_greedy(hf, prompt_ids: list[int], max_new_tokens: int, **image_inputs) -> list[int]:
    """Greedy continuation by transformers, recomputing the whole sequence each step (no cache to trust)."""
    ids = list(prompt_ids)
    mm_types = image_inputs.pop("mm_token_type_ids", None)
    for _ in range(max_new_tokens):
        kwargs = dict(image_inputs)
        if mm_types is not None:
            kwargs["mm_token_type_ids"] = torch.tensor([mm_types + [0] * (len(ids) - len(mm_types))])
        logits = hf(input_ids=torch.tensor([ids]), **kwargs).logits[0, -1]
        ids.append(int(torch.argmax(logits)))
    return ids[len(prompt_ids) :]


def run_joining(engine, prompts: dict[str, list[int]], join_at: dict[str, int], sampling: SamplingParams):
    """Each request joins the running batch at its own engine step (continuous batching); the tokens
    each one got, by request id. `engine`: anything with add_request / step / has_unfinished."""
    got: dict[str, list[int]] = {rid: [] for rid in prompts}
    step = 0
    while step == 0 or engine.has_unfinished():
        for rid, at in join_at.items():
            if at == step:
                engine.add_request(GenerateRequest(rid, prompts[rid], sampling))
        for out in engine.step():
            got[out.request_id].extend(out.token_ids)
        step += 1
    return got
