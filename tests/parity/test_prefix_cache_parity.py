"""Prefix caching changes no token: the runtime with its prefix cache against transformers (float32, both
tiny shapes), with the cached-token counts each request reports, and no page left held at the end."""

from __future__ import annotations

import random

import pytest

from engine_builder.tiny.tokenizer import SPECIAL_TOKENS
from gemma_runtime.api import GenerateRequest, SamplingParams
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine
from tests.parity.conftest import SLIDING_WINDOW, hf_greedy

NEW_TOKENS = 10
BS = 4  # tokens per page: a prefix of 6 windows is a dozen pages


def ids(n: int, seed: int, vocab: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(len(SPECIAL_TOKENS), vocab) for _ in range(n)]  # plain text: no image placeholder


def greedy(n: int = NEW_TOKENS) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


def run(engine: LLMEngine, requests: list[GenerateRequest], join_at: dict[str, int] | None = None):
    """Runs the requests (each added at its step, all at once by default); returns tokens and usage by id."""
    join_at = join_at or {r.request_id: 0 for r in requests}
    tokens = {r.request_id: [] for r in requests}
    usage = {}
    step = 0
    while step <= max(join_at.values()) or engine.has_unfinished():
        for r in requests:
            if join_at[r.request_id] == step:
                engine.add_request(r)
        for out in engine.step():
            tokens[out.request_id].extend(out.token_ids)
            if out.finished:
                usage[out.request_id] = out.usage
        step += 1
    return tokens, usage


def assert_nothing_held(engine: LLMEngine, free_at_start: int) -> None:
    """Every page is free or cached and evictable: no reference is left behind."""
    assert engine.blocks.num_free == free_at_start
    assert not any(engine.blocks.full.refs) and not any(engine.blocks.sliding.refs)


def cached_engine(engine_dir, **overrides) -> LLMEngine:
    config = dict(block_size=BS, max_num_batched_tokens=16, max_model_len=160)
    return LLMEngine(engine_dir, RuntimeConfig(**{**config, **overrides}))


@pytest.fixture(scope="module")
def family(tiny):
    """Three prompts sharing a prefix of 6 windows + 3 tokens, with their transformers continuations."""
    _, _, engine_dir, hf = tiny
    vocab = hf.config.text_config.vocab_size
    prefix = ids(6 * SLIDING_WINDOW + 3, seed=100, vocab=vocab)
    prompts = {f"f{i}": prefix + ids(5 + 3 * i, seed=200 + i, vocab=vocab) for i in range(3)}
    return prefix, prompts, {rid: hf_greedy(hf, p, NEW_TOKENS) for rid, p in prompts.items()}


def test_shared_prefix_in_turn(tiny, family):
    _, _, engine_dir, _ = tiny
    prefix, prompts, ref = family
    engine = cached_engine(engine_dir)
    free_at_start = engine.blocks.num_free
    for n, (rid, prompt) in enumerate(prompts.items()):
        tokens, usage = run(engine, [GenerateRequest(rid, prompt, greedy())])
        assert tokens[rid] == ref[rid], rid
        # the first computes everything; the others find every full page of the shared prefix
        assert usage[rid].cached_tokens == (0 if n == 0 else len(prefix) // BS * BS), rid
    assert_nothing_held(engine, free_at_start)
    stats = engine.stats()
    assert stats.prefix_cache_hits == 2 * (len(prefix) // BS * BS)
    assert stats.prefix_cache_queries == sum(len(p) for p in prompts.values())


def test_shared_prefix_concurrently(tiny, family):
    _, _, engine_dir, _ = tiny
    prefix, prompts, ref = family
    engine = cached_engine(engine_dir)
    free_at_start = engine.blocks.num_free
    requests = [GenerateRequest(rid, p, greedy()) for rid, p in prompts.items()]
    tokens, usage = run(engine, requests)
    assert tokens == ref
    cached = [usage[rid].cached_tokens for rid in prompts]
    # the first computes the prefix; the others join while it runs and take the pages it has finished
    assert cached[0] == 0 and all(c > 0 and c % BS == 0 and c <= len(prefix) for c in cached[1:]), cached
    assert_nothing_held(engine, free_at_start)
    # the same prompts again, all at once: each finds its whole prompt but the page holding its last token
    again = [GenerateRequest(rid + "b", p, greedy()) for rid, p in prompts.items()]
    tokens, usage = run(engine, again)
    assert {rid[:-1]: t for rid, t in tokens.items()} == ref
    assert all(usage[rid + "b"].cached_tokens == (len(p) - 1) // BS * BS for rid, p in prompts.items())
    assert_nothing_held(engine, free_at_start)


def test_multi_turn_conversation(tiny):
    """Each turn resends the last turn's prompt and answer: the answer's pages are cached too."""
    _, _, engine_dir, hf = tiny
    vocab = hf.config.text_config.vocab_size
    engine = cached_engine(engine_dir)
    free_at_start = engine.blocks.num_free
    history: list[int] = ids(2 * SLIDING_WINDOW + 1, seed=300, vocab=vocab)
    computed: list[int] = []  # tokens whose KV the previous turn left in the cache
    for turn in range(3):
        prompt = history + ids(3 + turn, seed=310 + turn, vocab=vocab)
        tokens, usage = run(engine, [GenerateRequest(f"t{turn}", prompt, greedy())])
        answer = tokens[f"t{turn}"]
        assert answer == hf_greedy(hf, prompt, NEW_TOKENS), turn
        same = next((i for i, (a, b) in enumerate(zip(computed, prompt)) if a != b), min(len(computed), len(prompt)))
        assert usage[f"t{turn}"].cached_tokens == same // BS * BS, turn
        assert turn == 0 or same > len(prompt) // 2  # the history is mostly reused
        computed = prompt + answer[:-1]  # the last sampled token never went through the model
        # a random model may answer with control tokens (an image placeholder is refused in a prompt):
        # the next turn's history renders them as plain text, as a chat template would
        history = prompt + [t if t >= len(SPECIAL_TOKENS) else len(SPECIAL_TOKENS) for t in answer]
    assert_nothing_held(engine, free_at_start)


def test_forced_eviction(tiny, family):
    """A pool too small to keep the prefix through unrelated traffic: it is evicted and recomputed."""
    _, _, engine_dir, _ = tiny
    prefix, prompts, ref = family
    vocab = tiny[3].config.text_config.vocab_size
    engine = cached_engine(engine_dir, num_full_blocks=40, num_sliding_blocks=40)
    free_at_start = engine.blocks.num_free
    (first, second) = list(prompts)[:2]
    tokens, usage = run(engine, [GenerateRequest(first, prompts[first], greedy())])
    assert tokens[first] == ref[first]
    other = [GenerateRequest(f"o{i}", ids(120, seed=400 + i, vocab=vocab), greedy(4)) for i in range(2)]
    run(engine, other)  # 2 x 31 full pages through a 40-page pool: the prefix's pages are taken
    tokens, usage = run(engine, [GenerateRequest(second, prompts[second], greedy())])
    assert tokens[second] == ref[second]
    assert usage[second].cached_tokens < len(prefix) // BS * BS
    assert_nothing_held(engine, free_at_start)


def test_sliding_pages_evicted_while_full_pages_stay(tiny, family):
    """The sliding pool is the small one: once traffic evicts the prefix's last window there, the full
    pages alone cannot serve it, and the prefix is recomputed."""
    from gemma_runtime.scheduling.prefix_cache import page_hashes

    _, _, engine_dir, hf = tiny
    prefix, prompts, ref = family
    engine = cached_engine(engine_dir, num_sliding_blocks=1, max_num_batched_tokens=64)  # the smallest pool allowed
    free_at_start = engine.blocks.num_free
    first, second = list(prompts)[:2]
    run(engine, [GenerateRequest(first, prompts[first], greedy())])
    vocab = hf.config.text_config.vocab_size
    other = [GenerateRequest(f"o{i}", ids(100, seed=600 + i, vocab=vocab), greedy(2)) for i in range(12)]
    run(engine, other)  # 12 x 25 sliding pages, more than that pool holds: the prefix's are evicted there
    full_pages = page_hashes(prefix, BS, [], [], [])
    assert all(h in engine.blocks.full.by_hash for h in full_pages)  # the full pool is large: all still cached
    tokens, usage = run(engine, [GenerateRequest(second, prompts[second], greedy())])
    assert tokens[second] == ref[second]
    assert usage[second].cached_tokens < len(full_pages) * BS
    assert_nothing_held(engine, free_at_start)


def test_preemption_with_shared_pages(tiny, family):
    _, _, engine_dir, _ = tiny
    prefix, prompts, ref = family
    engine = cached_engine(engine_dir, num_full_blocks=40, max_model_len=128)
    free_at_start = engine.blocks.num_free
    vocab = tiny[3].config.text_config.vocab_size
    more = {rid: p + ids(40, seed=500 + n, vocab=vocab) for n, (rid, p) in enumerate(prompts.items())}
    requests = [GenerateRequest(rid, p, greedy()) for rid, p in more.items()]
    join_at = {r.request_id: 2 * n for n, r in enumerate(requests)}
    engine_seqs = []
    original_add = engine.add_request

    def add(request, prepared=None):
        original_add(request, prepared)
        engine_seqs.append(engine.requests[request.request_id].seq)

    engine.add_request = add
    tokens, usage = run(engine, requests, join_at)
    assert sum(s.num_preemptions for s in engine_seqs) > 0, "the pool was meant to be too small for all three"
    _, _, _, hf = tiny
    for rid, prompt in more.items():
        assert tokens[rid] == hf_greedy(hf, prompt, NEW_TOKENS), rid
    assert any(u.cached_tokens > 0 for u in usage.values())
    assert_nothing_held(engine, free_at_start)


def test_aborts_leave_nothing_held(tiny, family):
    _, _, engine_dir, _ = tiny
    _, prompts, ref = family
    engine = cached_engine(engine_dir)
    free_at_start = engine.blocks.num_free
    for rid, p in prompts.items():
        engine.add_request(GenerateRequest(rid, p, greedy()))
    for _ in range(5):  # mid-prefill for some, sharing pages with the others
        engine.step()
    assert engine.blocks.num_free < free_at_start
    for rid in prompts:
        assert engine.abort(rid).finish_reason == "abort"
    assert_nothing_held(engine, free_at_start)
    # what the aborted requests computed is still right to reuse
    rid = next(iter(prompts))
    tokens, usage = run(engine, [GenerateRequest(rid, prompts[rid], greedy())])
    assert tokens[rid] == ref[rid] and usage[rid].cached_tokens > 0
    assert_nothing_held(engine, free_at_start)


def test_cache_off_reports_nothing(tiny, family):
    _, _, engine_dir, _ = tiny
    _, prompts, ref = family
    engine = cached_engine(engine_dir, enable_prefix_caching=False)
    for rid, p in list(prompts.items())[:2]:
        tokens, usage = run(engine, [GenerateRequest(rid, p, greedy())])
        assert tokens[rid] == ref[rid] and usage[rid].cached_tokens == 0
    assert engine.stats().prefix_cache_queries == 0


def test_images_in_the_shared_prefix(tiny):
    """Image soft tokens are one placeholder id: only the image's content hash tells two images apart."""
    import numpy as np
    from PIL import Image
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    _, _, engine_dir, hf = tiny
    engine = cached_engine(engine_dir, max_model_len=256, default_image_soft_tokens=70)
    free_at_start = engine.blocks.num_free
    spec = engine.spec
    processor = Gemma4ImageProcessorPil(
        patch_size=spec.vision.patch_size, pooling_kernel_size=spec.vision.pooling_kernel_size
    )
    pictures = [
        Image.fromarray(np.random.default_rng(s).integers(0, 256, (90, 120, 3), dtype=np.uint8)) for s in (1, 2)
    ]
    template = "<bos><|turn>user\nLook: <|image|> then tell me {}<turn|>\n<|turn>model\n"
    cases = [("same0", 0, "what it is"), ("same1", 0, "its colours"), ("other", 1, "what it is")]
    first_ids = None
    for rid, picture, question in cases:
        request = GenerateRequest(rid, template.format(question), greedy(), images=(pictures[picture],))
        prepared = engine.prepare(request)
        tokens, usage = run(engine, [request])
        pixels = processor(images=[pictures[picture]], max_soft_tokens=70, return_tensors="pt")
        mm_types = [1 if t == spec.multimodal.image_token_id else 0 for t in prepared.token_ids]
        ref = hf_greedy(
            hf,
            prepared.token_ids,
            NEW_TOKENS,
            pixel_values=pixels["pixel_values"],
            image_position_ids=pixels["image_position_ids"],
            mm_token_type_ids=mm_types,
        )
        assert tokens[rid] == ref, rid
        span = prepared.image_spans[0]
        if first_ids is None:
            first_ids, expected = prepared.token_ids, 0
        elif picture == 0:  # same image: everything up to where the questions part
            common = next(i for i, (a, b) in enumerate(zip(first_ids, prepared.token_ids)) if a != b)
            expected = common // BS * BS
            assert expected > span.end
        else:  # another image: the pages before it only
            expected = span.start // BS * BS
        assert usage[rid].cached_tokens == expected, rid
    assert_nothing_held(engine, free_at_start)
