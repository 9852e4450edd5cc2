"""Cost of constrained decoding per step: the host's token-mask fill and the mask's application.

B sequences, each under its own JSON-schema grammar (the tests' generated schemas, cycled), advance
one token per step by a random allowed token; per step we time (median over the steps):
- fill: `GrammarStep.mask` for the B rows (xgrammar's matchers on the host; what overlap hides behind
  the device's forward, gemma_runtime/llm_engine.py),
- accept: advancing the B matchers by their tokens,
- apply: `apply_token_mask` on [B, V] float32 logits on the chosen device (unpack + masked fill).
No Gemma tokenizer is reachable offline, so a byte-level BPE of --train-vocab tokens is trained on
Python's own sources (seconds) and the mask is sized to Gemma 4's vocabulary (--vocab, 262144).

    .venv/bin/python -m bench.grammar_mask [--batches 1,64] [--steps 40] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sysconfig
import time
from pathlib import Path

import torch

from gemma_runtime.grammar.compiler import GrammarCompiler
from gemma_runtime.grammar.logits import apply_token_mask, unpack_bitmask
from gemma_runtime.grammar.spec import StructuredOutput
from gemma_runtime.grammar.step import GrammarStep
from tests.unit.structured_schemas import generated_schemas

SPECIALS = ["<pad>", "<eos>", "<bos>", "<|channel>", "<channel|>", "<turn|>"]


def train_tokenizer(vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:150]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train(
        [str(f) for f in files],
        trainers.BpeTrainer(
            vocab_size=vocab, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", bos_token="<bos>")


class _Row:
    """What GrammarStep reads of an engine Sequence."""

    def __init__(self, grammar):
        self.grammar, self.num_pending = grammar, 0


def run(compiler: GrammarCompiler, vocab: int, batch: int, steps: int, device: str, rng: random.Random) -> dict:
    schemas = generated_schemas(64)
    specs = [StructuredOutput("json_schema", json.dumps(schemas[i % len(schemas)])) for i in range(batch)]
    rows = [_Row(compiler.new_state(s, compiler.compile(s))) for s in specs]
    step = GrammarStep(vocab)
    fill, accept, apply = [], [], []
    logits = torch.randn(batch, vocab, device=device)
    for _ in range(steps):
        t0 = time.perf_counter()
        mask = step.mask(rows)
        t1 = time.perf_counter()
        if mask is None:
            break
        masked = apply_token_mask(logits, mask)
        if device == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        allowed = unpack_bitmask(mask.bits[mask.rows], vocab)  # [R, V] on the host, to draw an allowed token
        tokens = [rng.choice(allowed[j].nonzero().flatten().tolist()) for j in range(len(mask.rows))]
        t3 = time.perf_counter()
        for i, token in zip(mask.rows, tokens):
            rows[i].grammar.accept(token)
        accept.append(time.perf_counter() - t3)
        fill.append(t1 - t0)
        apply.append(t2 - t1)
        del masked
    ms = lambda xs: 1e3 * statistics.median(xs)  # noqa: E731
    return {"batch": batch, "steps": len(fill), "fill_ms": ms(fill), "apply_ms": ms(apply), "accept_ms": ms(accept)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--vocab", type=int, default=262144)
    ap.add_argument("--train-vocab", type=int, default=32000)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    t = time.perf_counter()
    tokenizer = train_tokenizer(args.train_vocab)
    compiler = GrammarCompiler(tokenizer, args.vocab, [tokenizer.eos_token_id])
    print(f"tokenizer: {len(tokenizer)} trained tokens, mask width {args.vocab}; setup {time.perf_counter() - t:.1f} s")
    print(f"torch threads {torch.get_num_threads()}, device {args.device}")
    print("| batch | steps | mask fill (host) ms/step | apply ms/step | accept ms/step |")
    print("| --- | --- | --- | --- | --- |")
    for b in (int(x) for x in args.batches.split(",")):
        r = run(compiler, args.vocab, b, args.steps, args.device, random.Random(0))
        print(f"| {r['batch']} | {r['steps']} | {r['fill_ms']:.3f} | {r['apply_ms']:.3f} | {r['accept_ms']:.3f} |")


if __name__ == "__main__":
    main()
