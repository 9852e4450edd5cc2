"""The CUDA backends: the Triton kernels behind the same call signatures as the reference backends
(model/attention.py, model/moe.py, model/layers.py, model/kv_write.py, model/linear.py). gemma4.py imports this module only when CUDA is
available, so importing triton never happens on a CPU-only install.

The classes themselves are device-agnostic: tests run them on CPU tensors under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gemma_runtime.engine_format.fp8 import FP8, quantize_per_row, scale_name
from gemma_runtime.engine_format.spec import LayerSpec
from gemma_runtime.kernels.fp8_gemm import w8a16_linear
from gemma_runtime.kernels.geglu import fused_geglu
from gemma_runtime.kernels.gemv import gemv_linear
from gemma_runtime.kernels.kv_write import fused_qkv_norm_kv_write
from gemma_runtime.kernels.moe_gemm import fused_experts, routed_experts
from gemma_runtime.kernels.paged_decode import paged_decode_attention
from gemma_runtime.kernels.paged_prefill import paged_prefill_attention
from gemma_runtime.kernels.rms_norm import (
    fused_ffn_prologue,
    fused_layer_end,
    fused_moe_epilogue,
    fused_rms_norm,
)
from gemma_runtime.model import linear as policy
from gemma_runtime.model.forward_batch import ForwardBatch
from gemma_runtime.model.layers import FFNInputs
from gemma_runtime.model.registry import register


@register("attention", "cuda")
class TritonPagedAttention:
    """Decode steps take the split-K decode kernel; prefill/extend steps, and sliding layers of a step
    that carries image spans (bidirectional within a span), the varlen kernel."""

    @staticmethod
    def _max_query_len(batch: ForwardBatch) -> int:
        # the model runner fills it in from host lists; a batch built by hand may leave it to be read here
        if batch.max_query_len is None:
            batch.max_query_len = int((batch.query_start[1:] - batch.query_start[:-1]).max())
        return batch.max_query_len

    def __call__(
        self,
        q: torch.Tensor,  # [T, Hq, d]
        kv_cache: tuple[torch.Tensor, torch.Tensor],  # [slots, Hkv, d] each, this step's K/V included
        batch: ForwardBatch,
        layer: LayerSpec,
        sliding_window: int,
    ) -> torch.Tensor:
        is_sliding = layer.type == "sliding"
        k_cache, v_cache = kv_cache
        window = sliding_window if is_sliding else None
        tables = batch.block_tables[layer.type]
        spans = batch.span_bounds if is_sliding else None  # full layers stay causal over image tokens
        if spans is None and q.shape[0] == batch.num_seqs:  # every sequence brings exactly one query: a decode step
            return paged_decode_attention(q, k_cache, v_cache, tables, batch.context_lens, batch.block_size, window)
        return paged_prefill_attention(
            q,
            k_cache,
            v_cache,
            tables,
            batch.query_start,
            batch.positions,
            self._max_query_len(batch),
            batch.block_size,
            window,
            spans,
        )


@register("moe", "cuda")
class TritonFusedExperts:
    """Grouped expert GEMMs with the GELU-tanh gate fused; accepts FP8 expert weights with row scales."""

    accepts_fp8 = True  # model/linear.py's expert_weights passes e4m3 weights and scales through untouched

    def __call__(
        self,
        x: torch.Tensor,  # [T, H]
        weights: torch.Tensor,  # [T, k]
        ids: torch.Tensor,  # [T, k]
        gate_up: torch.Tensor,  # [E, 2Ie, H]
        down: torch.Tensor,  # [E, H, Ie]
        gate_up_scale: torch.Tensor | None = None,  # [E, 2Ie] with e4m3 gate_up
        down_scale: torch.Tensor | None = None,  # [E, H] with e4m3 down
    ) -> torch.Tensor:
        if x.shape[0] == 0:
            return torch.zeros_like(x)
        return fused_experts(x, weights, ids, gate_up, down, gate_up_scale, down_scale)

    def routed(
        self,
        x: torch.Tensor,
        router_in: torch.Tensor,
        router_proj: torch.Tensor,
        top_k: int,
        gate_up: torch.Tensor,
        down: torch.Tensor,
        gate_up_scale: torch.Tensor | None = None,
        down_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """TorchGroupedExperts.routed: the router GEMM (cuBLAS), its softmax/top-k tail in one kernel that
        for a batch of one or two also lays out one tile per routed row, then the expert GEMMs. Returns
        the float32 per-slot rows [T, k, H]: the norm backend's moe_epilogue sums them in its kernel."""
        T = x.shape[0]
        if T == 0:
            return torch.zeros((0, top_k, x.shape[1]), dtype=torch.float32, device=x.device)
        logits = torch.nn.functional.linear(router_in, router_proj)  # [T, E]
        return routed_experts(x, logits, top_k, gate_up, down, gate_up_scale, down_scale)


@register("norm", "cuda")
class TritonRMSNorm:
    """((residual +) rms_norm(x) * weight) (* scale), or rope(rms_norm(x) * weight), in one kernel,
    rounding where the reference does."""

    def __call__(
        self,
        x: torch.Tensor,
        weight: torch.Tensor | None,
        eps: float,
        residual: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        return fused_rms_norm(x, weight, eps, residual, scale, rope)

    def ffn_prologue(
        self,
        h: torch.Tensor,
        residual: torch.Tensor,
        w_post_attn: torch.Tensor,
        w_pre_ffn: torch.Tensor,
        eps: float,
        w_experts_in: torch.Tensor | None = None,
        router_scale: torch.Tensor | None = None,
    ) -> FFNInputs:
        """TorchRMSNorm.ffn_prologue in one kernel."""
        return FFNInputs(*fused_ffn_prologue(h, residual, w_post_attn, w_pre_ffn, eps, w_experts_in, router_scale))

    def moe_epilogue(
        self,
        dense: torch.Tensor,
        experts: torch.Tensor,
        residual: torch.Tensor,
        w_dense: torch.Tensor,
        w_experts: torch.Tensor,
        w_post: torch.Tensor,
        layer_scalar: torch.Tensor,
        w_next: torch.Tensor,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """TorchRMSNorm.moe_epilogue in one kernel (the sum over the experts' slots included)."""
        return fused_moe_epilogue(dense, experts, residual, w_dense, w_experts, w_post, layer_scalar, w_next, eps)

    def layer_end(
        self,
        m: torch.Tensor,
        residual: torch.Tensor,
        w_post: torch.Tensor,
        layer_scalar: torch.Tensor,
        w_next: torch.Tensor,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """TorchRMSNorm.layer_end in one kernel."""
        return fused_layer_end(m, residual, w_post, layer_scalar, w_next, eps)


@register("kv_write", "cuda")
class TritonKVWrite:
    """TorchKVWrite in one kernel: the q, k and v norms, rope, and the K/V cache writes."""

    def __call__(
        self,
        qkv: torch.Tensor,
        num_q_heads: int,
        num_kv_heads: int,
        head_dim: int,
        k_eq_v: bool,
        q_weight: torch.Tensor,
        k_weight: torch.Tensor,
        eps: float,
        rope: tuple[torch.Tensor, torch.Tensor],
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        slots: torch.Tensor,
    ) -> torch.Tensor:
        return fused_qkv_norm_kv_write(
            qkv,
            num_q_heads,
            num_kv_heads,
            head_dim,
            k_eq_v,
            q_weight,
            k_weight,
            eps,
            rope,
            kv_cache[0],
            kv_cache[1],
            slots,
        )


@register("geglu", "cuda")
class TritonGEGLU:
    """gelu_tanh(gate) * up in one kernel, rounding where the reference does."""

    def __call__(self, gate_up: torch.Tensor) -> torch.Tensor:
        return fused_geglu(gate_up)


def _scaled_mm_ok(x: torch.Tensor, w: torch.Tensor) -> bool:
    # rowwise-scaled FP8 GEMMs need a CUDA device, a bf16 output and K, N multiples of 16
    return x.is_cuda and x.dtype == torch.bfloat16 and w.shape[0] % 16 == 0 and w.shape[1] % 16 == 0


def fp8_linear(x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ w[N, K]^T with w e4m3 and per-row w_scale [N]: W8A16 up to policy.W8A16_MAX_ROWS rows,
    else torch._scaled_mm with dynamic per-token activation scales (emulated where it cannot run)."""
    x2 = x.reshape(-1, x.shape[-1])  # [M, K]
    if x2.shape[0] <= policy.W8A16_MAX_ROWS:
        return w8a16_linear(x, w, w_scale)
    if not _scaled_mm_ok(x, w):
        return policy.emulated_fp8_linear(x, w, w_scale)
    xq, x_scale = quantize_per_row(x2)  # [M, K] e4m3, [M]
    out = torch._scaled_mm(xq, w.t(), scale_a=x_scale[:, None], scale_b=w_scale.float()[None, :], out_dtype=x.dtype)
    return out.view(*x.shape[:-1], w.shape[0])  # [..., N]


@register("linear", "cuda")
class TritonLinear:
    """TorchLinear with the kernel each product takes on CUDA (policy: model/linear.py)."""

    def __call__(self, x: torch.Tensor, weights: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        w = weights[name]
        if policy.takes_gemv(x.numel() // x.shape[-1], w):
            return gemv_linear(x, w, weights[scale_name(name)] if w.dtype == FP8 else None)
        if w.dtype == FP8:
            return fp8_linear(x, w, weights[scale_name(name)])
        return F.linear(x, w)
