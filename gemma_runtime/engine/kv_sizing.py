"""How many KV pages each pool gets: sliding layers hold every sequence's window, full layers every
sequence at the full context within a byte budget (preemption covers the rest)."""

from __future__ import annotations

import torch

from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine_format.spec import EngineSpec
from gemma_runtime.inputs.processor import MAX_IMAGE_TOKENS
from gemma_runtime.speculative.registry import kept_sliding_window

DEFAULT_CPU_KV_BYTES = 1 << 30


def block_bytes(spec: EngineSpec, block_size: int, dtype: torch.dtype, kind: str) -> int:
    """Bytes one page takes across all layers of one geometry (K and V)."""
    element = torch.tensor([], dtype=dtype).element_size()
    return sum(2 * block_size * l.num_kv_heads * l.head_dim * element for l in spec.text.layers if l.type == kind)


def kv_budget(config: RuntimeConfig, device: torch.device) -> int:
    """kv_cache_bytes, else on CUDA what the loaded weights left free beyond (1 - gpu_memory_utilization)
    of the card, else 1 GiB."""
    if config.kv_cache_bytes is not None:
        return config.kv_cache_bytes
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return max(0, int(free - (1 - config.gpu_memory_utilization) * total))
    return DEFAULT_CPU_KV_BYTES


def kv_pool_sizes(
    config: RuntimeConfig, spec: EngineSpec, dtype: torch.dtype, device: torch.device, max_model_len: int
) -> tuple[int, int]:
    """(full, sliding) pages unless configured. Sliding layers: every sequence's window (plus the page
    being filled), plus one step's worth of new tokens (the token budget, or one whole image, which is
    never split). Full layers: every sequence at the full context, capped by the budget. Never fewer
    than one longest sequence needs. Call it once the weights are loaded (the budget on CUDA is what
    they leave)."""
    pages = lambda n: -(-n // config.block_size)  # noqa: E731
    window_pages = pages(kept_sliding_window(spec, config.speculative)) + 2
    step_pages = pages(max(config.max_num_batched_tokens, MAX_IMAGE_TOKENS))
    # with prefix caching, room for as many finished sequences' last windows again (scheduling/prefix_cache.py)
    keep = 2 if config.enable_prefix_caching else 1
    num_sliding = config.num_sliding_blocks or keep * config.max_num_seqs * window_pages + step_pages
    num_sliding = max(num_sliding, window_pages + step_pages)
    full_one = pages(max_model_len)
    if config.num_full_blocks:
        return max(config.num_full_blocks, full_one), num_sliding
    sliding_bytes = num_sliding * block_bytes(spec, config.block_size, dtype, "sliding")
    full_page = max(block_bytes(spec, config.block_size, dtype, "full"), 1)
    affordable = (kv_budget(config, device) - sliding_bytes) // full_page
    return max(min(full_one * config.max_num_seqs, affordable), full_one), num_sliding
