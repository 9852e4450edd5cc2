"""The Gemma 4 text decoder over a flattened batch (ForwardBatch), in the engine's weight layout.

Weights are plain tensors in a dict named as engines/README.md says; attention and MoE come from the
backend registry, so this file is the same on every device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import gemma_runtime.model.attention  # noqa: F401  (registers the reference backends)
import gemma_runtime.model.kv_write  # noqa: F401
import gemma_runtime.model.moe  # noqa: F401
from gemma_runtime.engine_format.spec import LayerSpec, TextSpec
from gemma_runtime.model.forward_batch import ForwardBatch
from gemma_runtime.model.layers import rope_cos_sin, rope_inv_freq
from gemma_runtime.model.linear import expert_weights
from gemma_runtime.model.registry import create

# Decode graphs of up to this many sequences run a MoE layer's dense MLP on the side stream
# (RuntimeConfig.moe_side_stream). Measured on the H100 (docs/benchmarks.md, 2026-11-26) at batch 1:
# 4.177 ms per step against 4.306 in bf16, 3.233 against 3.280 in FP8. Larger batches and eager steps
# (prefill) are unmeasured and keep one stream; bench/profile_decode.py --moe-side-stream re-measures.
SIDE_STREAM_MAX_ROWS = 1


class Gemma4TextModel:
    def __init__(
        self,
        spec: TextSpec,
        weights: dict[str, torch.Tensor],
        device: torch.device,
        placeholder_ids: tuple[int, ...] = (),
        pad_token_id: int = 0,
        moe_side_stream: bool = False,
    ):
        self.spec = spec
        self.placeholder_ids = torch.tensor(placeholder_ids, dtype=torch.int64, device=device)
        self.pad_token_id = pad_token_id
        self.w = weights
        self.device = device
        self.attention = create("attention", device)
        self.norm = create("norm", device)
        self.kv_write = create("kv_write", device)
        self.linear = create("linear", device)
        self.geglu = create("geglu", device)
        self.experts = create("moe", device) if spec.moe else None
        # where a MoE layer's dense MLP runs beside its experts (RuntimeConfig.moe_side_stream)
        use_side = moe_side_stream and spec.moe is not None and device.type == "cuda"
        self.side_stream = torch.cuda.Stream(device) if use_side else None
        self.inv_freq = [rope_inv_freq(l.head_dim, l.rope_theta, l.rope_angles).to(device) for l in spec.layers]
        # on the device: a host scalar would be copied in every step (and cannot be inside a CUDA graph)
        self.embed_scale = torch.tensor(spec.embed_scale, dtype=weights["embed_tokens.weight"].dtype, device=device)

    def embed(self, batch: ForwardBatch) -> torch.Tensor:
        """Token embeddings * sqrt(H) (rounded to the weight dtype), then image soft tokens scattered in unscaled."""
        table = self.w["embed_tokens.weight"]
        # Placeholder ids (image/video/audio soft tokens) embed as <pad>, as transformers does, so a stray
        # placeholder without its image still gets a well-defined embedding.
        ids = batch.input_ids
        if self.placeholder_ids.numel():
            ids = torch.where(torch.isin(ids, self.placeholder_ids), self.pad_token_id, ids)
        h = F.embedding(ids, table) * self.embed_scale  # [T, H]
        if batch.mm_embeds is not None:
            h.index_copy_(0, batch.mm_rows, batch.mm_embeds.to(h.dtype))  # by index: a bool mask would sync
        return h

    def forward(self, batch: ForwardBatch, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Returns the final-normed hidden states of the rows in batch.logits_indices: [S, H]."""
        x = self.embed(batch)
        # each layer ends by norming its output with the next one's input weight (the last: the final norm)
        x_in = self.norm(x, self.w["layers.0.input_norm.weight"], self.spec.rms_norm_eps)
        rope = {}
        n = len(self.spec.layers)
        for i, layer in enumerate(self.spec.layers):
            key = (layer.head_dim, layer.rope_theta, layer.rope_angles)
            if key not in rope:
                rope[key] = rope_cos_sin(batch.positions, self.inv_freq[i])
            w_next = self.w[f"layers.{i + 1}.input_norm.weight" if i + 1 < n else "norm.weight"]
            x, x_in = self._layer(i, layer, x, x_in, w_next, rope[key], batch, kv_caches[i])
        return x_in[batch.logits_indices]  # final-normed (a norm is per row: norming every row first is the same)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[S, H] -> [S, V] float32 through the tied embedding, with the final soft cap."""
        logits = F.linear(hidden, self.w["embed_tokens.weight"]).float()
        cap = self.spec.final_logit_softcapping
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    # --- one decoder layer -------------------------------------------------------------------------

    def _layer(
        self, i, layer: LayerSpec, x, x_in, w_next, cos_sin, batch, kv_cache
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: the residual stream [T, H]; x_in: x's input norm. Returns the layer's output and its norm
        with w_next (the next layer's input norm, or the final norm)."""
        p = f"layers.{i}."
        eps = self.spec.rms_norm_eps
        norm = self.norm  # each call: ((residual +) rms_norm(x) * w) (* scale), one kernel on CUDA
        residual = x
        h = self._attention(p, layer, x_in, cos_sin, batch, kv_cache)
        moe = self.spec.moe is not None
        # the new residual and every input the FFN half needs from it (one kernel on CUDA)
        ffn = norm.ffn_prologue(
            h,
            residual,
            self.w[p + "post_attn_norm.weight"],
            self.w[p + "pre_ffn_norm.weight"],
            eps,
            *((self.w[p + "moe.pre_norm.weight"], self.w[p + "moe.router_scale"]) if moe else ()),
        )
        residual = ffn.residual
        if moe:
            m, e = self._mlp_and_experts(p, ffn)
            # (residual + post_ffn_norm(post_norm_dense(m) + post_norm_experts(e))) * layer_scalar
            return norm.moe_epilogue(
                m,
                e,
                residual,
                self.w[p + "moe.post_norm_dense.weight"],
                self.w[p + "moe.post_norm_experts.weight"],
                self.w[p + "post_ffn_norm.weight"],
                self.w[p + "layer_scalar"],
                w_next,
                eps,
            )
        m = self._mlp(p, ffn.mlp_in)
        return norm.layer_end(m, residual, self.w[p + "post_ffn_norm.weight"], self.w[p + "layer_scalar"], w_next, eps)

    def _mlp(self, p: str, x: torch.Tensor) -> torch.Tensor:
        return self.linear(
            self.geglu(self.linear(x, self.w, p + "mlp.gate_up_proj.weight")), self.w, p + "mlp.down_proj.weight"
        )

    def _mlp_and_experts(self, p: str, ffn) -> tuple[torch.Tensor, torch.Tensor]:
        """The dense MLP and the experts run side by side from the same residual, each post-normed. The
        backend routes and runs the experts; it may hand back per-slot rows [T, k, H] and leave their sum
        to the epilogue's kernel. In a small decode graph the MLP is queued on the side stream, forked
        after the prologue and joined before the epilogue. That ordering also keeps the caching
        allocator safe without record_stream: the MLP's output, made on the side stream, is freed only
        after the join, and the side stream's next use of that memory waits on the next layer's fork,
        which follows the join."""
        run_experts = lambda: self.experts.routed(  # noqa: E731
            ffn.experts_in,
            ffn.router_in,
            self.w[p + "moe.router_proj.weight"],
            self.spec.moe.top_k,
            **expert_weights(self.experts, self.w, p),
        )
        side = self.side_stream
        if (
            side is None or ffn.mlp_in.shape[0] > SIDE_STREAM_MAX_ROWS or not torch.cuda.is_current_stream_capturing()
        ):  # eager steps and larger graphs: one stream
            return self._mlp(p, ffn.mlp_in), run_experts()
        main = torch.cuda.current_stream(self.device)
        side.wait_stream(main)  # fork: the prologue's outputs are written
        with torch.cuda.stream(side):
            m = self._mlp(p, ffn.mlp_in)
        e = run_experts()
        main.wait_stream(side)  # join: the epilogue reads m
        return m, e

    def _attention(self, p, layer: LayerSpec, h, cos_sin, batch, kv_cache) -> torch.Tensor:
        nq, nkv, d = self.spec.num_attention_heads, layer.num_kv_heads, layer.head_dim
        qkv = self.linear(
            h, self.w, p + "attn.qkv_proj.weight"
        )  # [T, (nq + 2nkv) d] or [T, (nq + nkv) d] on K=V layers
        # q and k normed and rotated, v normed; k and v go straight into this layer's cache pages
        q = self.kv_write(
            qkv,
            nq,
            nkv,
            d,
            layer.k_eq_v,
            self.w[p + "attn.q_norm.weight"],
            self.w[p + "attn.k_norm.weight"],
            self.spec.rms_norm_eps,
            cos_sin,
            kv_cache,
            batch.slot_mapping[layer.type],
        )  # [T, nq, d]
        o = self.attention(q, kv_cache, batch, layer, self.spec.sliding_window)  # [T, nq, d]
        return self.linear(o.reshape(o.shape[0], nq * d), self.w, p + "attn.o_proj.weight")  # [T, H]
