"""What a bench/run.py run is sized to and how its engine is configured: the GPU and dry-run sizes,
the host clock around device work, the prompts and sampling the measurements use, and the runtime
config that holds the largest decode batch and the longest prefill (also bench/profile_decode.py's)."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch

from gemma_runtime.api import SamplingParams
from gemma_runtime.config import RuntimeConfig

GB = 1e9


@dataclass(frozen=True)
class Sizes:
    models: tuple[str, ...]
    dtypes: tuple[str, ...]
    batches: tuple[int, ...]  # decode batch sizes
    prompt: int  # prompt tokens of each decode-run sequence
    warmup_steps: int
    decode_steps: int  # timed decode steps
    ttft_prompt: int
    prefill_lens: tuple[int, ...]
    arrivals: int  # requests in the continuous-arrival run
    arrivals_per_step: int  # new requests joining before each step
    arrival_prompt: int
    arrival_output: int  # output tokens drawn in [arrival_output / 2, arrival_output]
    hf_batches: tuple[int, ...]
    hf_new_tokens: int
    block_size: int = 16


GPU_SIZES = Sizes(
    models=("26b", "31b"),
    dtypes=("bf16", "fp8"),
    batches=(1, 8, 32, 64, 256),
    prompt=64,
    warmup_steps=4,
    decode_steps=64,
    ttft_prompt=16,
    prefill_lens=(2048, 32768),
    arrivals=1024,
    arrivals_per_step=32,
    arrival_prompt=128,
    arrival_output=128,
    hf_batches=(1, 32),
    hf_new_tokens=32,
)
DRY_SIZES = Sizes(
    models=("tiny",),
    dtypes=("bf16", "fp8"),
    batches=(1, 4),
    prompt=8,
    warmup_steps=1,
    decode_steps=3,
    ttft_prompt=8,
    prefill_lens=(32, 96),
    arrivals=8,
    arrivals_per_step=2,
    arrival_prompt=8,
    arrival_output=6,
    hf_batches=(1, 4),
    hf_new_tokens=3,
    block_size=4,
)


class Clock:
    """Host wall time around device work: synchronise first, so queued kernels are counted."""

    def __init__(self, device: torch.device):
        self.device = device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def prompt_ids(n: int, rng: random.Random) -> list[int]:
    return [rng.randrange(3, 400) for _ in range(n)]  # ordinary ids of the tiny tokenizer; no image placeholders


def greedy(n_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=n_tokens, ignore_eos=True)


def kv_bytes_per_token(spec) -> tuple[int, int]:
    """(full-layer, sliding-layer) K+V bytes per cached token, summed over the layers of each geometry."""
    out = {"full": 0, "sliding": 0}
    for layer in spec.text.layers:
        out[layer.type] += 2 * layer.num_kv_heads * layer.head_dim * 2  # K and V, bf16
    return out["full"], out["sliding"]


def system_name(graphs: bool | None, overlap: bool | None) -> str:
    """ "ours", or for an ablation run what it turned off, so its figures never pass for the default's."""
    off = [name for name, switch in (("graphs", graphs), ("overlap", overlap)) if switch is False]
    return "-".join(["ours"] + [f"no-{name}" for name in off])


STEP_TOKENS = 2048  # the engine's token budget per step (max_num_batched_tokens)


def decode_max_tokens(sizes: Sizes, batch: int, tokens_per_step: int = 1) -> int:
    """Output tokens each sequence of a decode run is given. The batch's prompts take several steps to
    prefill (STEP_TOKENS a step, and one more step of lag with overlapped scheduling), so the sequences
    prefilled first run that many tokens ahead of the last; each must still be running at the last timed
    step, or the batch shrinks inside the measurement. With speculation a step may give a sequence up to
    tokens_per_step (N + 1) tokens."""
    prefill_steps = -(
        -batch * sizes.prompt // (STEP_TOKENS - batch)
    )  # running sequences' decode tokens share the budget
    return (sizes.warmup_steps + sizes.decode_steps + 2) * tokens_per_step + prefill_steps + 1


def runtime_config(
    spec,
    sizes: Sizes,
    device: torch.device,
    graphs: bool | None = None,
    overlap: bool | None = None,
    moe_side_stream: bool | None = None,
    speculative: str = "off",
    num_speculative_tokens: int = 3,
) -> RuntimeConfig:
    """Pages for the largest decode batch and the longest prefill, within 85% of what the weights leave free.
    The batch sizes that do not fit are skipped (and said so) rather than preempting mid-measurement."""
    bs, window = sizes.block_size, spec.text.sliding_window
    per_step = num_speculative_tokens + 1 if speculative != "off" else 1
    max_batch = max(sizes.batches + (min(sizes.arrivals, max(sizes.batches)),))
    ctx = max(
        sizes.prompt + max(decode_max_tokens(sizes, b, per_step) for b in sizes.batches),
        sizes.arrival_prompt + sizes.arrival_output + 1,
    )
    longest = max(max(sizes.prefill_lens) + 2, ctx)
    step_tokens = STEP_TOKENS
    pages = lambda n: -(-n // bs)  # noqa: E731
    full_pages = max(pages(longest), max_batch * pages(ctx))
    sliding_pages = max_batch * (pages(min(ctx, window)) + 2) + pages(step_tokens) + pages(window) + 2
    if device.type == "cuda":
        full_tok, sliding_tok = kv_bytes_per_token(spec)
        free = torch.cuda.mem_get_info(device)[0] * 0.85 - 4 * GB  # activations, logits, allocator slack
        while max_batch > 1 and (full_pages * full_tok + sliding_pages * sliding_tok) * bs > free:
            max_batch //= 2
            full_pages = max(pages(longest), max_batch * pages(ctx))
            sliding_pages = max_batch * (pages(min(ctx, window)) + 2) + pages(step_tokens) + pages(window) + 2
    return RuntimeConfig(
        device=device.type,
        block_size=bs,
        num_full_blocks=full_pages,
        num_sliding_blocks=sliding_pages,
        max_num_seqs=max_batch,
        max_num_batched_tokens=step_tokens,
        max_model_len=longest,
        decode_graph_max_batch=None if graphs is None else max_batch if graphs else 0,
        prefill_graph_max_tokens=None if graphs in (None, True) else 0,
        overlap_scheduling=overlap,
        moe_side_stream=moe_side_stream,
        speculative=speculative,
        num_speculative_tokens=num_speculative_tokens,
    )
