"""Speculative verify steps, short prompts and the MTP drafter's rounds through their padded step graphs
(executor/row_padded_graphs.py, speculative/mtp_graphs.py). With CUDA: captured graphs decode the greedy
tokens of the engine without them. Without CUDA (the padding itself is checked in tests/unit): their
forward, through the Triton backends under the interpreter, reads nothing back to the host, which
capture would forbid."""

from __future__ import annotations

import pytest

from gemma_runtime.api import GenerateRequest, SamplingParams
from tests.gpu.decode_support import (
    CUDA,
    TritonGEGLU,
    TritonPagedAttention,
    TritonRMSNorm,
    engine_on_device,
    registry_engine,
    run_watched,
    swap_backends,
)
from tests.recorded import recorded_calls

SPEC = dict(speculative="ngram", num_speculative_tokens=3)
VERIFY_PROMPTS = ["red green blue yellow " * 4, "one two three one two three one two", "Hi"]


def verify_requests(max_tokens: int) -> list[GenerateRequest]:
    return [
        GenerateRequest(f"r{i}", p, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
        for i, p in enumerate(VERIFY_PROMPTS)
    ]


@pytest.mark.skipif(not CUDA, reason="captured graphs (the padding is checked on the CPU in tests/unit)")
def test_verify_and_prefill_graphs_decode_the_plain_engines_tokens(random_tiny_engine_dir):
    """Speculative verify steps and short prompts replayed as CUDA graphs: the greedy tokens of the engine
    without graphs."""
    want = engine_on_device(random_tiny_engine_dir, decode_graph_max_batch=0, prefill_graph_max_tokens=0, **SPEC)
    want = want.generate(verify_requests(12))
    fast = engine_on_device(random_tiny_engine_dir, decode_graph_max_batch=4, prefill_graph_max_tokens=64, **SPEC)
    assert sorted(fast.runner.verify_graphs.graphs) == [1, 2, 4]  # really captured
    assert sorted(fast.runner.prefill_graphs.graphs) == [16, 32, 64]
    verified, prefilled = recorded_calls(fast.runner.verify_graphs), recorded_calls(fast.runner.prefill_graphs)
    assert fast.generate(verify_requests(12)) == want
    assert any(max(lens) > 1 for _, lens in verified) and prefilled


@pytest.mark.parametrize("kind", ["verify", "prefill"])
def test_a_padded_forward_reads_nothing_back(random_tiny_engine_dir, kind):
    """The verify and prefill graphs' forward (their padding, then the model) makes the host wait for
    nothing, which capture would forbid. On the CPU the engine runs on the reference backends up to its
    first such step, which then goes through the Triton backends (interpreted) under the read detector."""
    engine = registry_engine(
        random_tiny_engine_dir,
        decode_graph_max_batch=4,
        prefill_graph_max_tokens=32 if kind == "prefill" else 0,
        **SPEC,
    )
    graphs = engine.runner.step_graphs[kind]
    real, seen = graphs.run, []  # (query_lens, host reads) of the first padded step

    def watched(batch, query_lens):
        if not CUDA:
            swap_backends(engine)
        out, found = run_watched(real, batch, query_lens)
        seen.append((query_lens, found))
        return out

    graphs.run = watched
    requests = verify_requests(12) if kind == "verify" else verify_requests(1)[2:]  # "Hi": a short prompt
    for r in requests:
        engine.add_request(r)
    while not seen and engine.has_unfinished():
        engine.step()
    assert seen, f"a {kind} step went through its graphs"
    query_lens, found = seen[0]
    assert max(query_lens) > 1 and found == []


@pytest.mark.skipif(not CUDA, reason="captured graphs (the padding is checked on the CPU in tests/unit)")
def test_mtp_draft_graphs_decode_the_plain_engines_tokens(random_tiny_mtp_engine_dir):
    mtp = dict(speculative="mtp", num_speculative_tokens=3)
    want = engine_on_device(random_tiny_mtp_engine_dir, decode_graph_max_batch=0, **mtp).generate(verify_requests(12))
    fast = engine_on_device(random_tiny_mtp_engine_dir, decode_graph_max_batch=4, **mtp)
    graphs = fast.speculation.drafter.graphs
    assert sorted(graphs.graphs) == [1, 2, 4]  # really captured
    rounds = recorded_calls(graphs)
    assert fast.generate(verify_requests(12)) == want
    assert rounds


def test_a_draft_round_reads_nothing_back(random_tiny_mtp_engine_dir):
    """The MTP drafter's padded round (its buffers, then N drafter steps) makes the host wait for nothing,
    which capture would forbid; on the CPU through the Triton backends under the interpreter."""
    engine = registry_engine(
        random_tiny_mtp_engine_dir, decode_graph_max_batch=4, speculative="mtp", num_speculative_tokens=3
    )
    graphs = engine.speculation.drafter.graphs
    real, seen = graphs.run, []

    def watched(*args):
        if not CUDA:  # the drafter's backends (its linears are plain torch either way)
            model = graphs.model
            model.attention, model.norm, model.geglu = TritonPagedAttention(), TritonRMSNorm(), TritonGEGLU()
        out, found = run_watched(real, *args)
        seen.append(found)
        return out

    graphs.run = watched
    engine.add_request(verify_requests(4)[0])
    while not seen and engine.has_unfinished():
        engine.step()
    assert seen == [[]]
