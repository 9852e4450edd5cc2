"""FP8 engines: a tiny MoE model built in float32, bf16 and fp8 from one checkpoint, compared on the CPU path.

The CPU path emulates the GPU's FP8 arithmetic (model/linear.py: activations rounded to e4m3 per token,
e4m3 weights with per-channel scales), so these figures are the quality the FP8 engine will have.

The checkpoint is partly trained on PASSAGES first (make_trained_checkpoint says why). Measured on
this CPU, seeds 5-8 (fp8 against bf16): teacher-forced greedy agreement 100% / 91.1% / 99.5% / 89.1%,
perplexity +3.3% / +14.7% / +9.0% / +10.6%; bf16 against float32 moves perplexity by at most 1%.
Why FP8 costs ten times more than bf16 here: e4m3 keeps 3 mantissa bits against bf16's 7, a rounding
step 16 times coarser, and a 64-wide tiny model averages that noise over few terms, so this model is
far more sensitive than a 2816-wide one. Bounds: agreement >= 85% and perplexity within +20% hold on
every seed measured, and still fail when a scale is misapplied (agreement falls to chance, perplexity
multiplies) or when e4m3 would round per tensor instead of per row.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from engine_builder.convert import build_engine
from engine_builder.tiny.random_checkpoint import make_tiny_checkpoint
from gemma_runtime.api import GenerateRequest, SamplingParams
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine
from gemma_runtime.engine_format.spec import EngineSpec
from gemma_runtime.model.forward_batch import ForwardBatch

# The model is trained on these passages; greedy runs start from each one's first PROMPT_TOKENS tokens
# and continue NEW_TOKENS tokens inside text the model has learned, where its margins are real.
PASSAGES = [
    "The quick brown fox jumps over the lazy dog, and the dog, who had seen many foxes, did not even look up from his warm place by the door.",
    "Gemma is a family of open models. Each model reads a prompt, one token after another, and writes the next token it finds most likely.",
    "A serving stack runs many requests side by side: it keeps their keys and values in pages and lets new requests join at every step.",
    "Write a short poem about the sea and the wind: the waves come in, the gulls go out, and the long grey light lies over the harbour.",
]
PROMPT_TOKENS = 8
NEW_TOKENS = 48
BLOCK = 16
TRAIN_STEPS = 30
MIN_AGREEMENT = 0.85
MAX_PPL_CHANGE = 0.20
SEED = 8




def make_trained_checkpoint(folder, seed: int) -> Path:
    """The tiny random MoE checkpoint, then TRAIN_STEPS AdamW steps on PASSAGES.

    A random tiny model's next-token margins are so thin that even bf16 against float32 flips most greedy
    choices on some seeds (measured: 38% agreement); a partly trained one (loss ~1 nat) has margins of
    the kind a real model has, so the comparison measures FP8 rather than ties. 30 steps take the loss
    to ~0.5-1 nat: learned, not memorised to certainty (which would hide any error)."""
    from transformers import Gemma4ForConditionalGeneration, PreTrainedTokenizerFast

    ckpt = make_tiny_checkpoint(folder, kind="moe", seed=seed, sliding_window=8, with_vision=False)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(ckpt))
    model = Gemma4ForConditionalGeneration.from_pretrained(str(ckpt), dtype=torch.float32)
    texts = [torch.tensor([tokenizer.encode(t, add_special_tokens=False)]) for t in PASSAGES]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(TRAIN_STEPS):
        loss = sum(model(input_ids=ids, labels=ids).loss for ids in texts) / len(texts)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(str(ckpt), safe_serialization=True)
    return ckpt


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> dict[str, LLMEngine]:
    root = tmp_path_factory.mktemp("fp8")
    ckpt = make_trained_checkpoint(root / "ckpt", seed=SEED)
    out = {}
    for dtype in ("fp32", "bf16", "fp8"):
        path = build_engine(str(ckpt), root / "engines", dtype=dtype, progress=False)
        out[dtype] = LLMEngine(path, RuntimeConfig(block_size=BLOCK, max_model_len=512, max_num_seqs=4))
    return out


def greedy(engine: LLMEngine, prompt_ids: list[int]) -> list[int]:
    req = GenerateRequest("r", prompt_ids, SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True))
    return engine.generate([req])["r"]


@torch.inference_mode()
def next_token_logits(engine: LLMEngine, ids: list[int]) -> torch.Tensor:
    """[n, V] float32 logits after every prefix of `ids`: one prefill of one sequence, every row kept."""
    n, pages = len(ids), -(-len(ids) // BLOCK)
    arange = torch.arange(n)
    table = torch.arange(pages)[None, :]  # [1, pages] one sequence owns the first pages of both pools
    batch = ForwardBatch(
        input_ids=torch.tensor(ids), positions=arange, query_start=torch.tensor([0, n]), context_lens=torch.tensor([n]),
        slot_mapping={"full": arange, "sliding": arange}, block_tables={"full": table, "sliding": table},
        block_size=BLOCK, logits_indices=arange,
    )  # fmt: skip
    text = engine.runner.text
    return text.logits(text.forward(batch, engine.runner.kv_caches))


def perplexity(engine: LLMEngine, texts: list[str]) -> float:
    """exp(mean next-token negative log-likelihood) over every token of every text after its first."""
    nll = []
    for text in texts:
        ids = engine.tokenizer.encode(text, add_special_tokens=False)
        logp = torch.log_softmax(next_token_logits(engine, ids)[:-1], dim=-1)  # [n-1, V] predicting ids[1:]
        nll.append(-logp.gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1))
    return math.exp(torch.cat(nll).mean().item())


def test_fp8_engine_layout(engines):
    fp8_dir = engines["fp8"].engine_dir
    spec = EngineSpec.load(fp8_dir)
    assert spec.dtype == "bfloat16" and spec.quantization is not None
    assert spec.quantization.method == "fp8_e4m3" and spec.quantization.granularity == "per_channel"
    with safe_open(str(fp8_dir / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
        for name in spec.quantization.modules:
            w, s = f.get_tensor(name), f.get_tensor(name + "_scale")
            assert w.dtype == torch.float8_e4m3fn and s.dtype == torch.float32 and s.shape == w.shape[:-1]
            assert (w.float().abs().amax(-1) == 448).all()  # every row uses e4m3's whole range
        quantized = set(spec.quantization.modules)
        kinds = {n.split(".", 2)[2] for n in quantized}
        assert kinds == {"attn.qkv_proj.weight", "attn.o_proj.weight", "mlp.gate_up_proj.weight", "mlp.down_proj.weight",
                         "moe.gate_up_proj", "moe.down_proj"}  # fmt: skip
        for name in names - quantized:
            if not name.endswith("_scale"):
                assert f.get_tensor(name).dtype == torch.bfloat16, name  # embeddings, norms, router stay bf16


def test_loading_in_another_dtype_keeps_fp8_weights_and_their_scales(engines):
    """A runtime dtype override casts every floating tensor (router_scale too, though its name ends in
    _scale) but the e4m3 weights and their float32 scales."""
    from gemma_runtime.engine_format.weights import load_weights

    spec = EngineSpec.load(engines["fp8"].engine_dir)
    weights = load_weights(engines["fp8"].engine_dir, torch.device("cpu"), torch.float16)
    fp8 = set(spec.quantization.modules)
    for name, t in weights.items():
        if name in fp8:
            assert t.dtype == torch.float8_e4m3fn, name
        elif name.endswith("_scale") and name[: -len("_scale")] in fp8:
            assert t.dtype == torch.float32, name
        else:
            assert t.dtype == torch.float16, name
    assert any(name.endswith("router_scale") for name in weights)


def test_fp8_agrees_with_bf16(engines):
    tok = engines["bf16"].tokenizer
    agree = total = same_prefix = 0
    for passage in PASSAGES:
        ids = tok.encode(passage, add_special_tokens=False)[:PROMPT_TOKENS]
        ref = greedy(engines["bf16"], ids)
        got = greedy(engines["fp8"], ids)
        prefix = next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b), len(ref))
        same_prefix += prefix
        # teacher-forced: does fp8 pick bf16's token at each step of bf16's own continuation?
        fp8_logits = next_token_logits(engines["fp8"], ids + ref)[len(ids) - 1 : -1]  # [NEW_TOKENS, V]
        agree += (fp8_logits.argmax(-1) == torch.tensor(ref)).sum().item()
        total += len(ref)
    agreement = agree / total
    print(f"\nfp8 vs bf16 greedy: teacher-forced agreement {agreement:.1%} over {total} tokens; "
          f"identical free-running prefix {same_prefix / len(PASSAGES):.1f} of {NEW_TOKENS} tokens on average")
    assert agreement >= MIN_AGREEMENT


def test_fp8_perplexity_close_to_bf16(engines):
    ppl = {k: perplexity(e, PASSAGES) for k, e in engines.items()}
    change = (ppl["fp8"] - ppl["bf16"]) / ppl["bf16"]
    print(f"\nperplexity over the passages: float32 {ppl['fp32']:.3f}, bf16 {ppl['bf16']:.3f}, fp8 {ppl['fp8']:.3f} "
          f"({change:+.2%} against bf16)")
    assert math.isfinite(ppl["fp8"]) and change < MAX_PPL_CHANGE
    assert abs(ppl["bf16"] - ppl["fp32"]) / ppl["fp32"] < 0.02  # the yardstick: bf16 itself moves it ~1%
