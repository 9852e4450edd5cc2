"""Speculative verify steps and short prompts through their row-padded buffers (executor/
row_padded_graphs.py) change nothing: the sampled rows' hidden states and every sequence's cache equal
the plain forward's, the padding writes only to the scratch page, and engines with the buffers give the
tokens of engines without them.

On the CPU the buffers run eagerly (capture needs CUDA): the padding is what these tests check;
tests/gpu/test_padded_step_graphs.py checks capture."""

from __future__ import annotations

import shutil

import pytest
import torch

from gemma_runtime.api import GenerateRequest, SamplingParams
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine
from gemma_runtime.executor.row_padded_graphs import prefill_lengths
from gemma_runtime.scheduling.scheduler import ScheduledSeq
from gemma_runtime.scheduling.sequence import Sequence
from tests.recorded import recorded_calls

PROMPTS = [
    "red green blue yellow " * 5,
    "The quick brown fox jumps over the lazy dog near the river bank, twice.",
    "one two three one two three one two three one two",
]


def engine_for(engine_dir, **kw) -> LLMEngine:
    base = dict(block_size=4, max_model_len=256, speculative="ngram", num_speculative_tokens=3)
    return LLMEngine(engine_dir, RuntimeConfig(**{**base, **kw}))


@pytest.mark.parametrize("drafts", [[0, 1, 3], [3, 3, 3], [2]], ids=str)
@torch.inference_mode()
def test_padded_verify_matches_the_plain_forward(random_tiny_engine_dir, drafts):
    """Sequences mid-decode verify 0-3 drafts each through the buffers (rows padded to 4 per sequence, the
    batch to its bucket): the hidden states of their rows and their caches are the plain forward's;
    only the scratch page differs, where the padding wrote."""
    engine = engine_for(random_tiny_engine_dir, decode_graph_max_batch=8)
    runner = engine.runner
    assert runner.verify_graphs is not None and runner.verify_graphs.query_len == 4
    for i, prompt in enumerate(PROMPTS[: len(drafts)]):
        engine.add_request(GenerateRequest(f"r{i}", prompt, SamplingParams(max_tokens=20, ignore_eos=True)))
    while any(s.num_computed < s.num_tokens - 1 for s in engine.scheduler.running) or not engine.scheduler.running:
        engine.step()  # prefills (ngram drafts follow from the next step; they are made by hand here)
    scheduled = []
    for seq, k in zip(engine.scheduler.running, drafts):
        seq.draft_token_ids = [(seq.token_ids[-1] + 7 * j) % 100 + 10 for j in range(1, k + 1)]
        engine.blocks.allocate(seq.block_tables, seq.num_computed, 1 + k)
        scheduled.append(ScheduledSeq(seq, 1, k))
    batch = runner._build_batch(scheduled)
    query_lens = [1 + k for k in drafts]
    assert runner.verify_graphs.fits(batch, query_lens) == any(drafts)
    before = [(k.clone(), v.clone()) for k, v in runner.kv_caches]
    plain = runner.text.forward(batch, runner.kv_caches)
    plain_cache = [(k.clone(), v.clone()) for k, v in runner.kv_caches]
    bs = engine.config.block_size
    scratch = {kind: slice(page * bs, page * bs + bs) for kind, page in runner.verify_graphs.scratch_page.items()}
    layer_kinds = [layer.type for layer in engine.spec.text.layers]
    for kind, (k, v), (k0, v0) in zip(layer_kinds, runner.kv_caches, before):
        k.copy_(k0), v.copy_(v0)
        k[scratch[kind]] = 0.0  # so the padding rows' writes show
    padded = runner.verify_graphs.run(batch, query_lens)
    assert padded.shape == plain.shape == (sum(query_lens), engine.spec.text.hidden_size)
    torch.testing.assert_close(padded, plain, rtol=1e-5, atol=1e-5)
    for kind, (k, v), (k1, v1) in zip(layer_kinds, runner.kv_caches, plain_cache):
        keep = torch.ones(k.shape[0], dtype=torch.bool)
        keep[scratch[kind]] = False
        torch.testing.assert_close(k[keep], k1[keep], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v[keep], v1[keep], rtol=1e-5, atol=1e-5)
        padding_rows = sum(4 - q for q in query_lens) + 4 * (runner.verify_graphs.bucket(len(drafts)) - len(drafts))
        assert (k[scratch[kind]].abs().sum() > 0) == (padding_rows > 0)


@pytest.mark.parametrize("spec", ["ngram", "mtp"])
def test_engines_with_verify_buffers_give_the_same_tokens(random_tiny_engine_dir, tmp_path, spec):
    """Concurrent greedy requests joining at different steps: the tokens with the decode and verify
    buffers equal the tokens without them, and the verify buffers really carried verify steps."""
    engine_dir = random_tiny_engine_dir
    if spec == "mtp":
        from bench.spec_decode import attach_random_drafter

        engine_dir = tmp_path / "engine"  # a copy: the drafter is converted into the engine folder
        shutil.copytree(random_tiny_engine_dir, engine_dir)
        attach_random_drafter(engine_dir, tmp_path)
    kw = dict(speculative=spec, max_num_batched_tokens=24)
    plain, padded = engine_for(engine_dir, **kw), engine_for(engine_dir, decode_graph_max_batch=4, **kw)
    verify_calls = recorded_calls(padded.runner.verify_graphs)
    free = padded.blocks.num_free
    outputs = []
    for engine in (plain, padded):
        got = {}
        pending = [
            GenerateRequest(f"r{i}", p, SamplingParams(max_tokens=16, ignore_eos=True)) for i, p in enumerate(PROMPTS)
        ]
        steps = 0
        while pending or engine.has_unfinished():
            if pending and steps % 3 == 0:
                engine.add_request(pending.pop(0))
            for out in engine.step():
                got[out.request_id] = got.get(out.request_id, []) + list(out.token_ids)
            steps += 1
        outputs.append(got)
    assert outputs[0] == outputs[1]
    assert len(verify_calls) > 0 and padded.stats().spec_decode_drafted > 0
    assert padded.blocks.num_free == free


def test_prefill_lengths():
    assert prefill_lengths(256) == [16, 32, 64, 128, 256]
    assert prefill_lengths(100) == [16, 32, 64, 100]
    assert prefill_lengths(16) == [16]
    assert prefill_lengths(5) == [5]


def with_scratch_zeroed(runner, engine, before):
    """The caches back to `before`, the scratch pages zeroed (so padding writes show); the scratch slices."""
    bs = engine.config.block_size
    scratch = {kind: slice(page * bs, page * bs + bs) for kind, page in runner.graphs.scratch_page.items()}
    for layer, (k, v), (k0, v0) in zip(engine.spec.text.layers, runner.kv_caches, before):
        k.copy_(k0), v.copy_(v0)
        k[scratch[layer.type]] = 0.0
    return scratch


@pytest.mark.parametrize("cached", [0, 8], ids=["fresh", "after-a-cached-prefix"])
@pytest.mark.parametrize("length", [13, 16, 29])
@torch.inference_mode()
def test_padded_prefill_matches_the_plain_forward(random_tiny_engine_dir, length, cached):
    """One prompt of 13, 16 or 29 tokens (buckets 16 and 32), from its start or after 8 cached tokens:
    the last row's hidden state and the cache equal the plain forward's; padding only in the scratch page."""
    engine = engine_for(
        random_tiny_engine_dir, speculative="off", decode_graph_max_batch=4, prefill_graph_max_tokens=32
    )
    runner = engine.runner
    prompt = [(7 * i) % 90 + 10 for i in range(cached + length)]
    seq = Sequence("p", prompt, SamplingParams(max_tokens=4), frozenset())
    engine.blocks.allocate(seq.block_tables, 0, len(prompt))
    if cached:  # the first 8 tokens' K/V in the cache, as a prefix cache hit leaves them
        runner.text.forward(runner._build_batch([ScheduledSeq(seq, cached)]), runner.kv_caches)
        seq.num_computed = cached
    item = ScheduledSeq(seq, length)
    batch = runner._build_batch([item])
    assert runner.prefill_graphs.fits(batch, [length]) and not runner.graphs.fits(batch, [length])
    before = [(k.clone(), v.clone()) for k, v in runner.kv_caches]
    plain = runner.text.forward(batch, runner.kv_caches)
    plain_cache = [(k.clone(), v.clone()) for k, v in runner.kv_caches]
    scratch = with_scratch_zeroed(runner, engine, before)
    padded = runner.prefill_graphs.run(batch, [length])
    assert padded.shape == plain.shape == (1, engine.spec.text.hidden_size)
    torch.testing.assert_close(padded, plain, rtol=1e-5, atol=1e-5)
    bucket = next(n for n in (16, 32) if n >= length)
    for layer, (k, v), (k1, v1) in zip(engine.spec.text.layers, runner.kv_caches, plain_cache):
        keep = torch.ones(k.shape[0], dtype=torch.bool)
        keep[scratch[layer.type]] = False
        torch.testing.assert_close(k[keep], k1[keep], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v[keep], v1[keep], rtol=1e-5, atol=1e-5)
        assert (k[scratch[layer.type]].abs().sum() > 0) == (bucket > length)


def run_one(engine: LLMEngine, request: GenerateRequest) -> tuple:
    """(token ids, logprobs) of one request run alone."""
    engine.add_request(request)
    tokens, logprobs = [], []
    while engine.has_unfinished():
        for out in engine.step():
            tokens += out.token_ids
            logprobs += [(lp.token_id, round(lp.logprob, 4)) for lp in out.logprobs or ()]
    return tokens, logprobs


def test_engines_with_prefill_buffers_give_the_same_tokens(random_tiny_engine_dir):
    """Short prompts through the buffers (greedy with logprobs, seeded sampling), a long one chunked
    eagerly, an image prompt eagerly, a second turn after its cached prefix: the plain engine's tokens."""
    from PIL import Image

    image = Image.new("RGB", (40, 30), (200, 30, 90))
    first = "<bos><|turn>user\nName three colours.<turn|>\n<|turn>model\n"
    requests = [
        GenerateRequest("short", "Hi there", SamplingParams(max_tokens=8, ignore_eos=True, logprobs=2)),
        GenerateRequest("long", PROMPTS[1] * 3, SamplingParams(max_tokens=6, ignore_eos=True)),
        GenerateRequest("seeded", PROMPTS[2], SamplingParams(max_tokens=6, temperature=0.9, seed=3, ignore_eos=True)),
        GenerateRequest("image", "<|image|> What is it?", SamplingParams(max_tokens=4, ignore_eos=True), (image,), 70),
        GenerateRequest("turn1", first, SamplingParams(max_tokens=5, ignore_eos=True)),
    ]
    kw = dict(speculative="off", max_num_batched_tokens=48)
    plain = engine_for(random_tiny_engine_dir, **kw)
    padded = engine_for(random_tiny_engine_dir, decode_graph_max_batch=4, prefill_graph_max_tokens=32, **kw)
    prefills = recorded_calls(padded.runner.prefill_graphs)
    outputs = []
    for engine in (plain, padded):
        got = {r.request_id: run_one(engine, r) for r in requests}
        reply = engine.tokenizer.decode(got["turn1"][0])
        second = first + reply + "<turn|>\n<|turn>user\nAnd two more?<turn|>\n<|turn>model\n"
        hits = engine.stats().prefix_cache_hits
        got["turn2"] = run_one(engine, GenerateRequest("turn2", second, SamplingParams(max_tokens=5, ignore_eos=True)))
        assert engine.stats().prefix_cache_hits > hits  # the second turn starts after its cached prefix
        outputs.append(got)
    assert outputs[0] == outputs[1]
    lengths = sorted(args[1][0] for args in prefills)
    assert lengths and lengths[-1] > 1, lengths  # prompts went through the buffers
