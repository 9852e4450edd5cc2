"""RuntimeConfig -> ResolvedConfig for one engine: what each None means, decided once."""

from __future__ import annotations

import torch

from gemma_runtime.config import ResolvedConfig, RuntimeConfig
from gemma_runtime.engine.kv_sizing import kv_pool_sizes
from gemma_runtime.engine_format.dtypes import TORCH_DTYPES
from gemma_runtime.engine_format.spec import EngineSpec
from gemma_runtime.speculative.policy import resolve_spec_max_batch

MAX_GRAPH_BATCH = 256  # the largest decode graph captured when decode_graph_max_batch is None (on CUDA)
MAX_PREFILL_GRAPH_TOKENS = 256  # the longest prefill graph captured when prefill_graph_max_tokens is None (CUDA)


def runtime_dtype(config: RuntimeConfig, spec: EngineSpec) -> torch.dtype:
    """The configured dtype, else the engine's: what the weights are loaded in."""
    return TORCH_DTYPES[config.dtype or spec.dtype]


def resolve_config(config: RuntimeConfig, spec: EngineSpec) -> ResolvedConfig:
    """Call once the weights are on the device: on a GPU the KV pools get what memory they leave."""
    device = torch.device(config.device)
    dtype = runtime_dtype(config, spec)
    on_cuda = device.type == "cuda"
    max_model_len = min(config.max_model_len or spec.max_model_len, spec.max_model_len)
    num_full, num_sliding = kv_pool_sizes(config, spec, dtype, device, max_model_len)
    layer_types = {layer.type for layer in spec.text.layers}
    # a geometry no layer has gets no pages (a dense model without sliding layers, say)
    num_full, num_sliding = (num_full if "full" in layer_types else 0), (num_sliding if "sliding" in layer_types else 0)
    graph_max = config.decode_graph_max_batch
    graph_max = min(config.max_num_seqs, MAX_GRAPH_BATCH if graph_max is None and on_cuda else graph_max or 0)
    prefill_max = config.prefill_graph_max_tokens
    prefill_max = MAX_PREFILL_GRAPH_TOKENS if prefill_max is None and on_cuda else prefill_max or 0

    def on_cuda_unless(value: bool | None) -> bool:
        return on_cuda if value is None else value

    return ResolvedConfig(
        device=device,
        dtype=dtype,
        block_size=config.block_size,
        num_full_blocks=num_full,
        num_sliding_blocks=num_sliding,
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens,
        max_model_len=max_model_len,
        default_image_soft_tokens=config.default_image_soft_tokens,
        seed=config.seed,
        decode_graph_max_batch=graph_max,
        capture_graphs=on_cuda,
        prefill_graph_max_tokens=min(prefill_max, config.max_num_batched_tokens, max_model_len),
        # a drafter reads each sequence's newest token on the host, so speculation resolves every step
        overlap_scheduling=on_cuda_unless(config.overlap_scheduling) and config.speculative == "off",
        moe_side_stream=on_cuda_unless(config.moe_side_stream),
        enable_prefix_caching=config.enable_prefix_caching,
        speculative=config.speculative,
        num_speculative_tokens=config.num_speculative_tokens,
        speculative_max_batch=resolve_spec_max_batch(config.speculative_max_batch, device),
    )
