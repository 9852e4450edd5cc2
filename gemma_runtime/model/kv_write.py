"""Where the KV cache is written: a layer's q/k/v step, from the fused QKV projection to q, with k and
v normed (k rotated) and written into the layer's cache pages. The reference for any device; the CUDA
backend does it in one kernel (model/cuda_backends.py TritonKVWrite, kernels/kv_write.py)."""

from __future__ import annotations

import torch

from gemma_runtime.model.layers import TorchRMSNorm
from gemma_runtime.model.registry import register


@register("kv_write", "cpu")
class TorchKVWrite:
    norm = TorchRMSNorm()

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
        """The fused QKV projection [T, (nq + 2 nkv) d] -> q [T, nq, d]: q and k normed and rotated, v normed
        without a weight, k and v written into the layer's cache at `slots` (one kernel on CUDA)."""
        nq, nkv, d = num_q_heads, num_kv_heads, head_dim
        q = qkv[:, : nq * d].view(-1, nq, d)  # [T, nq, d]
        k = qkv[:, nq * d : (nq + nkv) * d].view(-1, nkv, d)  # [T, nkv, d]
        # On K=V layers V is the raw (pre-norm, un-rotated) K projection.
        v = k if k_eq_v else qkv[:, (nq + nkv) * d :].view(-1, nkv, d)  # [T, nkv, d]
        q = self.norm(q, q_weight, eps, rope=rope)
        k = self.norm(k, k_weight, eps, rope=rope)
        v = self.norm(v, None, eps)
        k_cache, v_cache = kv_cache
        k_cache.index_copy_(0, slots, k.to(k_cache.dtype))
        v_cache.index_copy_(0, slots, v.to(v_cache.dtype))
        return q
