"""Small math pieces shared by the text decoder and the vision tower."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gemma_runtime.model.registry import register


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Gemma 4 RMSNorm: computed in float32, the weight multiplies directly (x_hat * w, not 1 + w)."""
    xf = x.float()
    out = xf * torch.pow(xf.pow(2).mean(-1, keepdim=True) + eps, -0.5)
    if weight is not None:
        out = out * weight.float()
    return out.type_as(x)


def router_input(x: torch.Tensor, router_scale: torch.Tensor, eps: float) -> torch.Tensor:
    """What the MoE router projects: rms_norm(x) without a weight, times router_scale, times H^-0.5."""
    return rms_norm(x, None, eps) * router_scale * x.shape[-1] ** -0.5


@dataclass(frozen=True)
class FFNInputs:
    """What the feed-forward half of a layer starts from, all [T, H]."""

    residual: torch.Tensor  # residual + post_attn_norm(attention output): the FFN's residual
    mlp_in: torch.Tensor  # pre_ffn_norm(residual), the dense MLP's input
    experts_in: torch.Tensor | None  # moe.pre_norm(residual), the experts' input (MoE layers)
    router_in: torch.Tensor | None  # router_input(residual), what the router projects (MoE layers)


@register("norm", "cpu")
class TorchRMSNorm:
    """The decoder's norms with what follows them: ((residual +) rms_norm(x) * weight) (* scale), or
    apply_rope(rms_norm(x) * weight, cos, sin) for q and k. The CUDA backend does each in one kernel
    (kernels/rms_norm.py)."""

    def __call__(
        self,
        x: torch.Tensor,
        weight: torch.Tensor | None,
        eps: float,
        residual: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        y = rms_norm(x, weight, eps)
        if rope is not None:
            y = apply_rope(y, *rope)
        if residual is not None:
            y = residual + y
        if scale is not None:
            y = y * scale
        return y

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
        """From the attention output h to the FFN's inputs: the new residual, then its pre-FFN norm and,
        on MoE layers (w_experts_in and router_scale given), the experts' and the router's inputs."""
        x = self(h, w_post_attn, eps, residual=residual)
        mlp_in = self(x, w_pre_ffn, eps)
        if w_experts_in is None:
            return FFNInputs(x, mlp_in, None, None)
        return FFNInputs(x, mlp_in, self(x, w_experts_in, eps), router_input(x, router_scale, eps))

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
        """The end of a MoE layer: x = (residual + post_ffn_norm(post_norm_dense(dense) + post_norm_experts(experts)))
        * layer_scalar, and x's norm with w_next (the next layer's input norm, or the final norm).
        `experts` is [T, H], or float32 per-slot rows [T, k, H] still to be summed."""
        if experts.dim() == 3:
            experts = experts.sum(1).to(dense.dtype)  # [T, k, H] -> [T, H]
        m = self(experts, w_experts, eps, residual=self(dense, w_dense, eps))
        return self.layer_end(m, residual, w_post, layer_scalar, w_next, eps)

    def layer_end(
        self,
        m: torch.Tensor,
        residual: torch.Tensor,
        w_post: torch.Tensor,
        layer_scalar: torch.Tensor,
        w_next: torch.Tensor,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The end of a layer: x = (residual + post_ffn_norm(m)) * layer_scalar, and x's norm with w_next."""
        x = self(m, w_post, eps, residual=residual, scale=layer_scalar)
        return x, self(x, w_next, eps)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def geglu(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up: [..., 2I] with the gate half first -> [..., I]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return gelu_tanh(gate) * up


@register("geglu", "cpu")
class TorchGEGLU:
    """The dense MLP's activation; the CUDA backend is one kernel (kernels/geglu.py)."""

    def __call__(self, gate_up: torch.Tensor) -> torch.Tensor:
        return geglu(gate_up)


def rope_inv_freq(head_dim: int, theta: float, rope_angles: int) -> torch.Tensor:
    """[head_dim/2] frequencies: theta^(-2i/head_dim) for i < rope_angles, then zeros.

    The exponent's denominator is the whole head_dim even when only `rope_angles` frequencies rotate
    (Gemma 4's proportional RoPE on full-attention layers); zero frequencies leave those dims unrotated.
    """
    exponents = torch.arange(0, 2 * rope_angles, 2, dtype=torch.int64).float() / head_dim
    rotated = 1.0 / (theta**exponents)
    return torch.cat([rotated, torch.zeros(head_dim // 2 - rope_angles)])


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [T] -> cos, sin [T, head_dim] (NeoX layout: the half-angles repeated)."""
    freqs = positions.float()[:, None] * inv_freq.to(positions.device)[None, :]  # [T, head_dim/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [T, head_dim]
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, head_dim]; cos/sin [T, head_dim]. NeoX-style: dim d pairs with d + head_dim/2."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    cos, sin = cos.to(x.dtype)[:, None, :], sin.to(x.dtype)[:, None, :]  # [T, 1, head_dim]
    return x * cos + rotated * sin
