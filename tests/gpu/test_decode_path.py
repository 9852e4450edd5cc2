"""The decode path without overhead (issue: CUDA graphs, no host synchronisation inside a step,
sampling on the device, scheduling overlapped with the running step).

Without CUDA: a decode launch through the Triton backends (run by Triton's CPU interpreter) is watched
for every torch call that would make the host wait for the GPU (.item(), .tolist(), bool(tensor),
nonzero, bincount, boolean-mask indexing...) made by our code. With CUDA: PyTorch's own sync detector
(torch.cuda.set_sync_debug_mode) watches the same launch, and captured graphs and overlapped steps
decode the greedy tokens of the plain engine.
"""

from __future__ import annotations

import pytest
import torch

from gemma_runtime.api import GenerateRequest, SamplingParams
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine
from tests.gpu.decode_support import (
    CUDA,
    DEVICE,
    PROMPTS,
    HostReadDetector,
    engine_on_device,
    registry_engine,
    run_watched,
    swap_backends,
)


def requests(**sampling):
    return [
        GenerateRequest(f"r{i}", p, SamplingParams(max_tokens=6, ignore_eos=True, **sampling))
        for i, p in enumerate(PROMPTS)
    ]


@pytest.mark.parametrize("kind", ["moe", "dense"])
def test_engine_greedy_with_triton_backends_matches_reference(request, kind):
    """The tiny engine, MoE (the 26B-A4B's layers) and dense (the 31B's), decodes the same greedy tokens
    with the Triton backends as with the reference (float32 on the CPU interpreter; on CUDA in float32
    too, where tf32 dots leave the argmax alone). Prompts longer and shorter than the window (8)."""
    engine_dir = request.getfixturevalue(
        {"moe": "random_tiny_engine_dir", "dense": "random_tiny_dense_engine_dir"}[kind]
    )

    def requests():
        return [
            GenerateRequest(f"r{i}", p, SamplingParams(max_tokens=12, ignore_eos=True))
            for i, p in enumerate(PROMPTS[:2])
        ]

    ref = LLMEngine(engine_dir, RuntimeConfig(block_size=4, max_model_len=128)).generate(requests())
    assert engine_on_device(engine_dir).generate(requests()) == ref


def test_detector_sees_host_reads(random_tiny_engine_dir):
    """The detector itself: a read made from runtime code is caught, one made elsewhere is not."""
    from gemma_runtime.model.cuda_backends import TritonPagedAttention as Backend

    batch = type("B", (), {"max_query_len": None, "query_start": torch.tensor([0, 3, 5])})()
    with HostReadDetector() as detector:
        Backend._max_query_len(batch)  # a batch built without max_query_len: read from the device
        torch.tensor([1, 2]).tolist()  # this file's own read
    assert len(detector.found) == 1 and "cuda_backends.py" in detector.found[0]  # int(tensor) there, not here


@pytest.mark.parametrize(
    "sampling",
    [dict(), dict(temperature=0.8, top_k=20, top_p=0.9, min_p=0.01, seed=1, logprobs=2)],
    ids=["greedy", "sampled"],
)
def test_a_decode_launch_reads_nothing_back(random_tiny_engine_dir, sampling):
    """On the CPU the steps before the watched launch run on the reference backends (the interpreter is
    slow, and only the launch is watched); the launch goes through the Triton backends."""
    engine = registry_engine(random_tiny_engine_dir, overlap_scheduling=True, decode_graph_max_batch=4)
    for r in requests(**sampling):
        engine.add_request(r)
    for _ in range(3):
        engine.step()  # prefills, then decodes: every sequence now has a token pending on the device
    assert all(s.num_pending == 1 for s in engine.scheduler.running) and len(engine.scheduler.running) == 3
    plan = engine.scheduler.schedule()
    assert all(item.num_new == 1 for item in plan.scheduled)
    if not CUDA:
        swap_backends(engine)
    _, found = run_watched(engine.runner.launch, plan.scheduled)
    assert found == []


def test_graphs_and_overlap_decode_the_plain_engines_tokens(random_tiny_engine_dir):
    """Graphs captured on CUDA (eager padded buffers on the CPU) and overlapped steps: same greedy tokens.
    On the CPU the plain engine runs the reference backends (the interpreter is slow; the Triton
    backends' tokens equal the reference's: test_engine_greedy_with_triton_backends_matches_reference)."""
    plain = registry_engine(random_tiny_engine_dir, overlap_scheduling=False, decode_graph_max_batch=0)
    want = plain.generate(requests())
    fast = engine_on_device(random_tiny_engine_dir, overlap_scheduling=True, decode_graph_max_batch=4)
    assert fast.generate(requests()) == want
    if CUDA:
        assert sorted(fast.runner.graphs.graphs) == [1, 2, 4]  # really captured


@pytest.mark.skipif(not CUDA, reason="a second CUDA stream")
def test_moe_side_stream_decodes_the_plain_engines_tokens(random_tiny_engine_dir, monkeypatch):
    """The dense MLP on a side stream beside the experts inside the decode graphs (here of every size):
    the same greedy tokens. The side stream's MLP first sleeps ~1 ms on the GPU, so an epilogue that did
    not wait for the join would read the MLP's output before it is written."""
    from gemma_runtime.model import gemma4
    from gemma_runtime.model.gemma4 import Gemma4TextModel

    want = engine_on_device(
        random_tiny_engine_dir, overlap_scheduling=False, decode_graph_max_batch=0, moe_side_stream=False
    ).generate(requests())
    mlp = Gemma4TextModel._mlp

    def slow_mlp(self, p, x):
        torch.cuda._sleep(2_000_000)  # cycles, on whichever stream the MLP is queued on
        return mlp(self, p, x)

    monkeypatch.setattr(Gemma4TextModel, "_mlp", slow_mlp)  # before the engine captures its graphs
    monkeypatch.setattr(gemma4, "SIDE_STREAM_MAX_ROWS", 4)
    beside = engine_on_device(
        random_tiny_engine_dir, overlap_scheduling=True, decode_graph_max_batch=4, moe_side_stream=True
    )
    assert beside.runner.text.side_stream is not None and sorted(beside.runner.graphs.graphs) == [1, 2, 4]
    assert beside.generate(requests()) == want


def test_taught_replies_in_bf16_through_the_fast_decode_path(taught_checkpoint_dir, taught_engine_dir):
    """The taught tiny model's replies (transformers' float32 greedy output) come out of the engine in
    bf16 with overlap and decode graphs: on CUDA through the Triton kernels and captured graphs, on the
    CPU through the reference backends. The stated bf16 tolerance is exact greedy agreement on these
    replies: the taught model's top-1 margins are far above bf16 rounding."""
    from transformers import AutoTokenizer

    from engine_builder.tiny.taught import render_prompt
    from engine_builder.tiny.taught_corpus import TAUGHT_CONVERSATIONS

    tokenizer = AutoTokenizer.from_pretrained(taught_checkpoint_dir)
    engine = LLMEngine(
        taught_engine_dir,
        RuntimeConfig(
            device=DEVICE.type, dtype="bfloat16", max_num_seqs=16, overlap_scheduling=True, decode_graph_max_batch=16
        ),
    )
    requests = [
        GenerateRequest(
            c["name"],
            render_prompt(tokenizer, c),
            SamplingParams(max_tokens=len(tokenizer.encode(c["reply"])) + 8),
            images=tuple(spec.image() for spec in c.get("images", ())),
        )
        for c in TAUGHT_CONVERSATIONS
    ]
    got = {name: tokenizer.decode(ids, skip_special_tokens=False) for name, ids in engine.generate(requests).items()}
    assert got == {c["name"]: c["reply"] for c in TAUGHT_CONVERSATIONS}


def test_image_prompts_with_the_triton_kernels(random_tiny_engine_dir):
    """Two images in one prompt, with a chunk budget smaller than an image: the Triton backends (spans
    bidirectional inside the prefill kernel on sliding layers) decode the reference backends' tokens.
    (Kept small: under the interpreter every kernel program is a Python call.)"""
    import numpy as np
    from PIL import Image

    def noise(w, h, seed):
        return Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8))

    prompt = "<bos><|turn>user\nLook: <|image|> and then <|image|> now tell me<turn|>\n<|turn>model\n"

    def request():
        images = (noise(120, 90, 1), noise(64, 160, 2))
        return GenerateRequest("img", prompt, SamplingParams(max_tokens=3, ignore_eos=True), images=images)

    settings = dict(block_size=4, max_model_len=256, max_num_batched_tokens=24, default_image_soft_tokens=70)
    ref = LLMEngine(random_tiny_engine_dir, RuntimeConfig(**settings))
    assert len(ref.prepare(request()).image_spans) == 2
    want = ref.generate([request()])
    assert engine_on_device(random_tiny_engine_dir, **settings).generate([request()]) == want
