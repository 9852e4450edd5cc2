"""FP8 quality figures on the CPU, made independent of the CPU's own bf16 and float32 kernels.

PyTorch's CPU bf16 matmuls take different kernels (AMX, AVX512-BF16, oneDNN's reference paths, ATen's
fallback), which round and accumulate differently, and float32 GEMMs change their summation order with
the ISA and the thread count. A quality test that ran bf16 natively, or trained its model in float32,
passed or failed by the processor (issue 12: bf16 perplexity moved 0.8% on one CPU, 2.1% on an AMX one).
So every figure a test asserts on is computed in a way that no kernel path can move:

- the model is trained in float64 (summation-order noise ~1e-16, far below the float32 the checkpoint
  is saved in), on a fixed thread count;
- "bf16" is the bf16 engine's weights (rounded by the builder, a deterministic cast) run in float32
  arithmetic; "fp8" is the FP8 engine's e4m3 weights and scales run in float32 arithmetic, with the
  activations rounded to e4m3 per token exactly as the CPU path emulates _scaled_mm (model/linear.py).
  What FP8 costs is then the difference of two weight roundings, not of two CPUs' bf16 units.

The engines' native bf16 arithmetic is still checked (`native` figures), against bounds measured across
kernel paths (`python -m tests.unit.fp8_quality` prints them; the spread is in test_fp8.py's docstring).
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from engine_builder.tiny.random_checkpoint import make_tiny_checkpoint
from gemma_runtime.api import GenerateRequest, SamplingParams
from gemma_runtime.engine.llm_engine import LLMEngine
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
TRAIN_THREADS = 2
SEED = 8


@contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_trained_checkpoint(folder, seed: int = SEED) -> Path:
    """The tiny random MoE checkpoint, then TRAIN_STEPS AdamW steps on PASSAGES, in float64.

    A random tiny model's next-token margins are so thin that even bf16 against float32 flips most greedy
    choices on some seeds (measured: 38% agreement); a partly trained one (loss ~1 nat) has margins of
    the kind a real model has, so the comparison measures FP8 rather than ties. 30 steps take the loss
    to ~0.5-1 nat: learned, not memorised to certainty (which would hide any error). float64 makes the
    saved float32 weights the same on every CPU (float32 training drifted with the GEMM kernels)."""
    from transformers import Gemma4ForConditionalGeneration, PreTrainedTokenizerFast

    ckpt = make_tiny_checkpoint(folder, kind="moe", seed=seed, sliding_window=8, with_vision=False)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(ckpt))
    # eager experts: the grouped-mm path takes no float64
    model = Gemma4ForConditionalGeneration.from_pretrained(
        str(ckpt), dtype=torch.float64, experts_implementation="eager"
    )
    texts = [torch.tensor([tokenizer.encode(t, add_special_tokens=False)]) for t in PASSAGES]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with _threads(TRAIN_THREADS):
        for _ in range(TRAIN_STEPS):
            loss = sum(model(input_ids=ids, labels=ids).loss for ids in texts) / len(texts)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.to(torch.float32).save_pretrained(str(ckpt), safe_serialization=True)
    return ckpt


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
        input_ids=torch.tensor(ids),
        positions=arange,
        query_start=torch.tensor([0, n]),
        context_lens=torch.tensor([n]),
        slot_mapping={"full": arange, "sliding": arange},
        block_tables={"full": table, "sliding": table},
        block_size=BLOCK,
        logits_indices=arange,
    )
    text = engine.runner.text
    return text.logits(text.forward(batch, engine.runner.kv_caches)).float()


def perplexity(engine: LLMEngine, texts: list[str] = PASSAGES) -> float:
    """exp(mean next-token negative log-likelihood) over every token of every text after its first."""
    nll = []
    for text in texts:
        ids = engine.tokenizer.encode(text, add_special_tokens=False)
        logp = torch.log_softmax(next_token_logits(engine, ids)[:-1], dim=-1)  # [n-1, V] predicting ids[1:]
        nll.append(-logp.gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1))
    return math.exp(torch.cat(nll).mean().item())


def continuations(engine: LLMEngine) -> list[tuple[list[int], list[int]]]:
    """(prompt, greedy continuation) for each passage: its first PROMPT_TOKENS tokens and NEW_TOKENS more."""
    out = []
    for passage in PASSAGES:
        ids = engine.tokenizer.encode(passage, add_special_tokens=False)[:PROMPT_TOKENS]
        out.append((ids, greedy(engine, ids)))
    return out


def teacher_forced_agreement(reference: list[tuple[list[int], list[int]]], candidate: LLMEngine) -> float:
    """The share of the reference's greedy tokens (`continuations`) that the candidate also ranks first,
    fed the reference's own tokens: a flip early on does not cascade."""
    agree = total = 0
    for ids, ref in reference:
        logits = next_token_logits(candidate, ids + ref)[len(ids) - 1 : -1]  # [NEW_TOKENS, V]
        agree += (logits.argmax(-1) == torch.tensor(ref)).sum().item()
        total += len(ref)
    return agree / total


def build_engines(root: Path) -> dict[str, LLMEngine]:
    """fp32 / bf16 / fp8 engines of one trained checkpoint, each also run in float32 arithmetic.

    Keys: "fp32"; "bf16" and "fp8" (float32 arithmetic over the engine's stored weights: deterministic);
    "bf16-native" and "fp8-native" (the engines' own bf16 arithmetic, as served on this CPU)."""
    from engine_builder.convert import build_engine
    from gemma_runtime.config import RuntimeConfig

    ckpt = make_trained_checkpoint(root / "ckpt")
    out = {}
    for dtype in ("fp32", "bf16", "fp8"):
        path = build_engine(str(ckpt), root / "engines", dtype=dtype, progress=False)
        out[dtype] = LLMEngine(
            path, RuntimeConfig(dtype="float32", block_size=BLOCK, max_model_len=512, max_num_seqs=4)
        )
        if dtype != "fp32":
            out[dtype + "-native"] = LLMEngine(path, RuntimeConfig(block_size=BLOCK, max_model_len=512, max_num_seqs=4))
    return out


def figures(engines: dict[str, LLMEngine]) -> dict[str, float]:
    """Every figure the tests bound: perplexities and the agreements of each candidate with its reference."""
    ppl = {k: perplexity(e) for k, e in engines.items()}
    bf16 = continuations(engines["bf16"])
    return {
        **{f"ppl {k}": v for k, v in ppl.items()},
        **{f"agree {k}/bf16": teacher_forced_agreement(bf16, engines[k]) for k in ("fp8", "bf16-native", "fp8-native")},
    }


# The CPU kernel paths the spread is measured over, each at one and two threads: whatever this CPU has
# (AMX, AVX512-BF16), AVX512 without its bf16 instructions (oneDNN's bf16 kernels then convert and
# accumulate in float32 otherwise), and AVX2 for oneDNN, ATen's vector kernels and MKL's float32 GEMMs.
KERNEL_PATHS = {
    "native": {},
    "avx512-core": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}


def _spread() -> None:
    """Runs `figures` in a fresh process per kernel path and thread count, then prints min and max."""
    import json
    import subprocess
    import sys
    import tempfile

    rows = {}
    for path, env in KERNEL_PATHS.items():
        for threads in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                code = (
                    "import json, sys, torch; from pathlib import Path; from tests.unit.fp8_quality import build_engines, figures; "
                    "import hashlib; "
                    f"torch.set_num_threads({threads}); out = figures(build_engines(Path(sys.argv[1]))); "
                    "out['trained weights sha256'] = hashlib.sha256((Path(sys.argv[1]) / 'ckpt' / 'model.safetensors').read_bytes()).hexdigest()[:12]; "
                    "print(json.dumps(out))"
                )
                full_env = dict(os.environ, **env, OMP_NUM_THREADS=str(threads))
                proc = subprocess.run([sys.executable, "-c", code, tmp], env=full_env, capture_output=True, text=True)
                if proc.returncode:
                    raise SystemExit(proc.stderr)
                rows[f"{path}, {threads} thread(s)"] = json.loads(proc.stdout.strip().splitlines()[-1])
    names = list(next(iter(rows.values())))
    print("| figure | " + " | ".join(rows) + " | min | max |")
    print("|---" * (len(rows) + 3) + "|")
    for name in names:
        vals = [r[name] for r in rows.values()]
        if isinstance(vals[0], str):
            print(f"| {name} | " + " | ".join(vals) + f" | {len(set(vals))} distinct | |")
        else:
            print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in vals) + f" | {min(vals):.4f} | {max(vals):.4f} |")


if __name__ == "__main__":
    _spread()
