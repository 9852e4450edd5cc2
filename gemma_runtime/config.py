"""Runtime settings: RuntimeConfig, built by whoever starts the engine (never read at import), where None
means "decide for me"; and ResolvedConfig, what the engine decided (engine/resolve.py), passed whole to
the floors below. No torch at import: the server's Triton translator imports this without a GPU stack."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


SPECULATIVE_METHODS = ("off", "mtp", "ngram")


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = "cpu"
    dtype: str | None = None  # None: the engine's dtype
    block_size: int = 16  # tokens per KV page, both geometries
    num_full_blocks: int | None = None  # pages for full-attention layers; None: sized from max_num_seqs * max_model_len
    num_sliding_blocks: int | None = None  # pages for sliding layers; None: enough for every sequence's window
    # Caps the full-layer pool when num_full_blocks is not given. None: 1 GiB on CPU; on CUDA whatever is
    # free once the weights are loaded, keeping (1 - gpu_memory_utilization) of the card for activations.
    kv_cache_bytes: int | None = None
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 64  # sequences decoded together
    max_num_batched_tokens: int = 2048  # token budget of one step (decode tokens + prefill chunks)
    max_model_len: int | None = None  # None: the engine's max_model_len
    default_image_soft_tokens: int = 280
    seed: int = 0  # seeds the sampler of requests that bring no seed of their own
    # Decode batches up to this size run through padded static buffers, replayed as CUDA graphs on a GPU
    # (capped by max_num_seqs; 0 turns it off). None: on for CUDA, off elsewhere. On the CPU a positive
    # value runs the padded buffers eagerly, which only tests want.
    decode_graph_max_batch: int | None = None
    # A step that is one sequence's prompt (or the rest of it) of up to this many tokens, without images,
    # runs through padded static buffers of 16, 32, 64, ... rows, replayed as CUDA graphs on a GPU: a short
    # prompt's time to first token is otherwise mostly the host launching its kernels. 0 turns it off;
    # None: 256 on CUDA (capped by max_num_batched_tokens), off elsewhere; on the CPU a positive value runs
    # the padded buffers eagerly, which only tests want.
    prefill_graph_max_tokens: int | None = None
    # Schedule and launch step N+1 before reading step N's tokens on the host, so the host's work (
    # scheduling, batch building, detokenizing, stop checks) hides behind the GPU's. None: on for CUDA.
    overlap_scheduling: bool | None = None
    # A MoE layer's dense MLP on a second CUDA stream beside its router and experts (both read the same
    # residual and meet only in the epilogue), so each branch's short kernels fill the other's ramp and
    # tail: two parallel branches in the decode graphs of up to gemma4.SIDE_STREAM_MAX_ROWS sequences,
    # where the H100 measured it (docs/benchmarks.md). None: on for CUDA. Dense models and the CPU
    # ignore it.
    moe_side_stream: bool | None = None
    # Full pages are shared between sequences with the same prefix and kept after they end (evictable);
    # a next turn or a shared system prompt then starts where the cached prefix ends (scheduling/prefix_cache.py).
    enable_prefix_caching: bool = True
    # Speculative decoding (gemma_runtime/speculative/): "off", "ngram" (prompt lookup) or "mtp" (the
    # engine's Gemma 4 assistant drafter). Up to num_speculative_tokens drafts per sequence per step are
    # verified in one forward. A step whose decoding sequences outnumber speculative_max_batch drafts
    # nothing (verifying costs more than it saves once a batch is compute-bound); None: the measured
    # default (speculative/policy.py).
    speculative: str = "off"
    num_speculative_tokens: int = 3
    speculative_max_batch: int | None = None
    # One engine across this many ranks (torch.distributed: NCCL on GPUs, gloo on CPU): this process is
    # rank 0 and spawns the others (gemma_runtime/parallel/). Expert parallel splits a MoE's experts across
    # the ranks instead of each expert's intermediate. A collective that waits longer than
    # parallel_timeout_s fails its step (a rank that died or hung) instead of hanging the server.
    tensor_parallel_size: int = 1
    enable_expert_parallel: bool = False
    parallel_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError("block_size, max_num_seqs and max_num_batched_tokens must be positive")
        if self.decode_graph_max_batch is not None and self.decode_graph_max_batch < 0:
            raise ValueError("decode_graph_max_batch must be 0 (off) or positive")
        if self.prefill_graph_max_tokens is not None and self.prefill_graph_max_tokens < 0:
            raise ValueError("prefill_graph_max_tokens must be 0 (off) or positive")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        if self.speculative not in SPECULATIVE_METHODS:
            raise ValueError(f"speculative must be one of {', '.join(SPECULATIVE_METHODS)}, not {self.speculative!r}")
        if self.num_speculative_tokens < 1:
            raise ValueError("num_speculative_tokens must be positive")
        if self.speculative_max_batch is not None and self.speculative_max_batch < 0:
            raise ValueError("speculative_max_batch must be 0 (never) or positive")
        if self.tensor_parallel_size < 1 or self.parallel_timeout_s <= 0:
            raise ValueError("tensor_parallel_size and parallel_timeout_s must be positive")
        if self.tensor_parallel_size > 1 and self.speculative != "off":
            # the ranks' step broadcast carries no draft rows yet (gemma_runtime/parallel/step_channel.py)
            raise ValueError(
                "speculative decoding does not run with tensor_parallel_size > 1 yet: use one or the other"
            )


def default_device() -> str:
    """cuda when a GPU is visible, else cpu: what a server started without --device runs on."""
    import torch  # here, not at the top: the server's Triton translator imports this module without a GPU stack

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class ResolvedConfig:
    """A RuntimeConfig with every None decided for one engine on one device (engine/resolve.py)."""

    device: torch.device
    dtype: torch.dtype  # of the activations, the unquantized weights and the KV cache
    block_size: int
    num_full_blocks: int  # KV pages of the full-attention layers' pool
    num_sliding_blocks: int  # KV pages of the sliding layers' pool
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int  # never above the engine's
    default_image_soft_tokens: int
    seed: int
    decode_graph_max_batch: int  # 0: off
    capture_graphs: bool  # replay the padded decode buffers as CUDA graphs (else run them eagerly)
    prefill_graph_max_tokens: int  # 0: off
    overlap_scheduling: bool
    moe_side_stream: bool
    enable_prefix_caching: bool
    speculative: str = "off"  # "off", "mtp" or "ngram"
    num_speculative_tokens: int = 3
    speculative_max_batch: int = 0  # decoding sequences above which a step drafts nothing

    @property
    def max_pages_per_seq(self) -> int:
        return -(-self.max_model_len // self.block_size)
