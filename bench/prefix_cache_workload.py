"""A multi-turn agent workload with the prefix cache on and off: time to first token per turn, prefill
tokens computed, and the share of prompt tokens served from the cache.

Every conversation starts with the same system prompt (instructions and a tool list, ~2,000 tokens);
each turn resends the whole history (system, earlier user messages and answers) plus a new user
message, and the next turn starts as soon as the answer ends. The conversations run concurrently in
one engine, driven step by step in this process, so the time to first token includes queueing. On
CPU the tiny random engine stands in (its figures are ratios, not a model's speed); `--engine` takes
any built engine and `--device cuda` a GPU.

    .venv/bin/python bench/prefix_cache_workload.py [--conversations 16 --turns 8 --system-tokens 2000]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from gemma_runtime.api import GenerateRequest, SamplingParams
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": f"tool_{i}",
            "description": f"Does step {i} of a task: " + "x " * 40,
            "parameters": {"type": "object", "properties": {"arg": {"type": "string"}}},
        },
    }
    for i in range(12)
]


@dataclass
class Conversation:
    history: list[int]
    turn: int = 0
    ttft: dict[int, float] = field(default_factory=dict)  # turn -> seconds


@dataclass
class TurnFigures:
    ttft: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0


def system_prompt(engine: LLMEngine, n: int) -> list[int]:
    """The system turn and the tool list, as text through the engine's tokenizer, cut or padded to n tokens."""
    text = "<bos><|turn>system\nYou are an agent. Use the tools.\n" + json.dumps(TOOLS) + "<turn|>\n"
    ids = engine.inputs.tokenize(text)
    while len(ids) < n:
        ids += ids[: n - len(ids)]
    return ids[:n]


def run(engine_dir: Path, config: RuntimeConfig, args) -> dict[int, TurnFigures]:
    engine = LLMEngine(engine_dir, config)
    rng = random.Random(0)
    vocab = engine.spec.text.vocab_size
    system = system_prompt(engine, args.system_tokens)
    convs = {f"c{i}": Conversation(list(system)) for i in range(args.conversations)}
    figures = {t: TurnFigures() for t in range(1, args.turns + 1)}
    sent_at: dict[str, float] = {}
    prompts: dict[str, list[int]] = {}
    sampling = SamplingParams(max_tokens=args.answer_tokens, ignore_eos=True)

    def send(cid: str) -> None:
        conv = convs[cid]
        conv.turn += 1
        user = [rng.randrange(10, vocab) for _ in range(args.user_tokens)]
        prompt = conv.history + user
        rid = f"{cid}-t{conv.turn}"
        prompts[rid] = prompt
        sent_at[rid] = time.perf_counter()
        engine.add_request(GenerateRequest(rid, prompt, sampling))

    for cid in convs:
        send(cid)
    answers: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            rid = out.request_id
            cid, turn = rid.split("-t")[0], int(rid.split("-t")[1])
            if rid not in answers:
                answers[rid] = []
                figures[turn].ttft.append(time.perf_counter() - sent_at[rid])
            answers[rid].extend(out.token_ids)
            if out.finished:
                figures[turn].prompt_tokens += out.usage.prompt_tokens
                figures[turn].cached_tokens += out.usage.cached_tokens
                convs[cid].history = prompts[rid] + answers[rid]
                if convs[cid].turn < args.turns:
                    send(cid)
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", type=Path, default=None, help="engine directory (default: a tiny random MoE engine)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--conversations", type=int, default=16)
    p.add_argument("--turns", type=int, default=8)
    p.add_argument("--system-tokens", type=int, default=2000)
    p.add_argument("--user-tokens", type=int, default=40)
    p.add_argument("--answer-tokens", type=int, default=24)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine_dir = args.engine
        if engine_dir is None:
            from engine_builder.convert import build_engine
            from engine_builder.tiny.random_checkpoint import make_tiny_checkpoint

            ckpt = make_tiny_checkpoint(Path(tmp) / "ckpt", kind="moe", seed=0, sliding_window=512, with_vision=False)
            engine_dir = build_engine(str(ckpt), Path(tmp) / "engines", dtype="float32", progress=False)
        results = {}
        for label, on in (("on", True), ("off", False)):
            config = RuntimeConfig(
                device=args.device,
                enable_prefix_caching=on,
                max_num_seqs=args.conversations,
                max_num_batched_tokens=args.max_num_batched_tokens,
            )
            t0 = time.perf_counter()
            results[label] = run(engine_dir, config, args)
            print(f"cache {label}: {time.perf_counter() - t0:.1f} s wall", flush=True)
    print(
        f"\n{args.conversations} conversations x {args.turns} turns, system prompt {args.system_tokens} tokens, "
        f"user {args.user_tokens}, answer {args.answer_tokens}\n"
    )
    print(
        "| turn | TTFT on (ms, mean) | TTFT off (ms, mean) | prefill computed on | prefill computed off | from cache on |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for turn in range(1, args.turns + 1):
        on, off = results["on"][turn], results["off"][turn]
        print(
            f"| {turn} | {1e3 * statistics.mean(on.ttft):.1f} | {1e3 * statistics.mean(off.ttft):.1f} | "
            f"{on.prompt_tokens - on.cached_tokens} | {off.prompt_tokens - off.cached_tokens} | "
            f"{on.cached_tokens / on.prompt_tokens:.1%} |"
        )
    later = [results["on"][t] for t in range(2, args.turns + 1)]
    share = sum(f.cached_tokens for f in later) / max(sum(f.prompt_tokens for f in later), 1)
    last_on, last_off = (statistics.mean(results[k][args.turns].ttft) for k in ("on", "off"))
    print(
        f"\nturn {args.turns} TTFT: {1e3 * last_on:.1f} ms with the cache, {1e3 * last_off:.1f} ms without "
        f"({last_off / last_on:.1f}x); prompt tokens from cache on turns 2-{args.turns}: {share:.1%}"
    )


if __name__ == "__main__":
    main()
