"""Gemma 4 vision tower + multimodal projector in plain torch: patches -> soft-token embeddings.

Each image runs at its own patch count, so there is no padding and no attention mask: attention is
bidirectional over the image's own patches. Parameter names equal the engine's `vision.*` weights with
the prefix stripped (engines/README.md). Dtype casts follow transformers' Gemma4VisionModel: norms,
pooling, the sqrt(hidden) scale and standardization run in float32; everything else in the model dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gemma_runtime.engine_format.spec import VisionSpec
from gemma_runtime.inputs.image_preprocess import PreprocessedImage
from gemma_runtime.model.layers import rms_norm


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, dtype: torch.dtype):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def linear(d_in: int, d_out: int, dtype: torch.dtype) -> nn.Linear:
    return nn.Linear(d_in, d_out, bias=False, dtype=dtype).requires_grad_(False)


# ---------------------------------------------------------------- 2-D RoPE


def axial_rope_tables(
    position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [N, head_dim]: the first half of a head rotates with x, the second half with y."""
    spatial = head_dim // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, spatial, 2, dtype=torch.float, device=position_ids.device) / spatial))
    freqs = position_ids[..., None].float() * inv_freq  # [N, 2, head_dim/4]
    fx, fy = freqs[:, 0], freqs[:, 1]  # each [N, head_dim/4]
    # NeoX pairing inside each half: channel i pairs with i + head_dim/4, so each frequency appears twice.
    angles = torch.cat([fx, fx, fy, fy], dim=-1)  # [N, head_dim]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def apply_axial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, heads, head_dim]; cos/sin [N, head_dim]. Each half is rotated on its own (x half, y half)."""
    cos, sin = cos[:, None], sin[:, None]  # [N, 1, head_dim]
    halves = [
        xh * c + rotate_half(xh) * s for xh, c, s in zip(x.chunk(2, dim=-1), cos.chunk(2, dim=-1), sin.chunk(2, dim=-1))
    ]
    return torch.cat(halves, dim=-1)


# ---------------------------------------------------------------- encoder layer


class Attention(nn.Module):
    def __init__(self, spec: VisionSpec, dtype: torch.dtype):
        super().__init__()
        h, nh, hd = spec.hidden_size, spec.num_attention_heads, spec.head_dim
        self.num_heads, self.head_dim, self.eps = nh, hd, spec.rms_norm_eps
        self.q_proj = linear(h, nh * hd, dtype)
        self.k_proj = linear(h, nh * hd, dtype)
        self.v_proj = linear(h, nh * hd, dtype)
        self.o_proj = linear(nh * hd, h, dtype)
        self.q_norm = RMSNorm(hd, spec.rms_norm_eps, dtype)
        self.k_norm = RMSNorm(hd, spec.rms_norm_eps, dtype)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        q = self.q_proj(x).view(n, self.num_heads, self.head_dim)  # [N, heads, hd]
        k = self.k_proj(x).view(n, self.num_heads, self.head_dim)  # [N, heads, hd]
        v = self.v_proj(x).view(n, self.num_heads, self.head_dim)  # [N, heads, hd]
        q = apply_axial_rope(self.q_norm(q), cos, sin)
        k = apply_axial_rope(self.k_norm(k), cos, sin)
        v = rms_norm(v, None, self.eps)
        # q/k are RMS-normed, so Gemma 4 uses no 1/sqrt(d) scaling; no mask: one image, all patches see all.
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), scale=1.0
        )  # [heads, N, hd]
        return self.o_proj(out.transpose(0, 1).reshape(n, self.num_heads * self.head_dim))  # [N, heads*hd] -> [N, H]


class MLP(nn.Module):
    def __init__(self, spec: VisionSpec, dtype: torch.dtype):
        super().__init__()
        self.gate_proj = linear(spec.hidden_size, spec.intermediate_size, dtype)
        self.up_proj = linear(spec.hidden_size, spec.intermediate_size, dtype)
        self.down_proj = linear(spec.intermediate_size, spec.hidden_size, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class EncoderLayer(nn.Module):
    """Sandwich norms around attention and MLP, as in the Gemma 4 text layers."""

    def __init__(self, spec: VisionSpec, dtype: torch.dtype):
        super().__init__()
        self.self_attn = Attention(spec, dtype)
        self.mlp = MLP(spec, dtype)
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, dtype)
        self.pre_feedforward_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, dtype)
        self.post_feedforward_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, dtype)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Encoder(nn.Module):
    def __init__(self, spec: VisionSpec, dtype: torch.dtype):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(spec, dtype) for _ in range(spec.num_layers))


class PatchEmbedder(nn.Module):
    def __init__(self, spec: VisionSpec, dtype: torch.dtype):
        super().__init__()
        self.input_proj = linear(3 * spec.patch_size**2, spec.hidden_size, dtype)
        self.position_embedding_table = nn.Parameter(
            torch.zeros(2, spec.position_embedding_size, spec.hidden_size, dtype=dtype), requires_grad=False
        )

    def forward(self, pixel_values: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        # Pixels arrive in [0, 1]; the tower was trained on [-1, 1].
        h = self.input_proj((2 * (pixel_values - 0.5)).to(self.input_proj.weight.dtype))  # [N, H]
        table = self.position_embedding_table
        return h + (table[0][position_ids[:, 0]] + table[1][position_ids[:, 1]])


# ---------------------------------------------------------------- the tower


class VisionEncoder(nn.Module):
    """Gemma 4 vision tower and projector: per image, [num_soft_tokens, text_hidden_size] embeddings."""

    def __init__(self, spec: VisionSpec, text_hidden_size: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        if spec.head_dim % 4:
            raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {spec.head_dim}")
        self.spec = spec
        self.patch_embedder = PatchEmbedder(spec, dtype)
        self.encoder = Encoder(spec, dtype)
        if spec.standardize:
            self.register_buffer("std_bias", torch.zeros(spec.hidden_size, dtype=dtype))
            self.register_buffer("std_scale", torch.ones(spec.hidden_size, dtype=dtype))
        self.embedding_projection = linear(spec.hidden_size, text_hidden_size, dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding_projection.weight.dtype

    @torch.no_grad()
    def forward(self, images: list[PreprocessedImage]) -> list[torch.Tensor]:
        return [self.encode_one(image) for image in images]

    def encode_one(self, image: PreprocessedImage) -> torch.Tensor:
        device = self.embedding_projection.weight.device
        pixels = image.pixel_values.to(device)
        positions = image.position_ids.to(device)
        h = self.patch_embedder(pixels, positions)  # [N, Hv]
        h = self.run_layers(h, positions)  # [N, Hv]
        pooled = self.pool(h, positions)  # [num_soft_tokens, Hv] float32
        if pooled.shape[0] != image.num_soft_tokens:
            raise ValueError(
                f"image pooled to {pooled.shape[0]} tokens but was preprocessed for {image.num_soft_tokens}"
            )
        return self.project(self.standardize(pooled))  # [num_soft_tokens, H_text]

    def run_layers(self, h: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        cos, sin = axial_rope_tables(positions, self.spec.head_dim, self.spec.rope_theta, h.dtype)
        for layer in self.encoder.layers:
            h = layer(h, cos, sin)
        return h

    def pool(self, h: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Average each k x k block of patches (found by position, raster order), then scale by sqrt(Hv) in float32."""
        k = self.spec.pooling_kernel_size
        blocks_per_row = (int(positions[:, 0].max()) + 1) // k
        block = positions[:, 0] // k + blocks_per_row * (positions[:, 1] // k)  # [N] output slot of each patch
        num_out = h.shape[0] // (k * k)
        pooled = torch.zeros(num_out, h.shape[1], dtype=torch.float32, device=h.device)
        pooled.index_add_(0, block, h.float() * (1.0 / (k * k)))  # [num_out, Hv]
        # The reference rounds the average to the model dtype before scaling; keep that rounding.
        return pooled.to(h.dtype).float() * self.spec.hidden_size**0.5

    def standardize(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.spec.standardize:
            pooled = (pooled - self.std_bias.float()) * self.std_scale.float()
        return pooled.to(self.dtype)

    def project(self, soft: torch.Tensor) -> torch.Tensor:
        return self.embedding_projection(rms_norm(soft, None, self.spec.rms_norm_eps))
