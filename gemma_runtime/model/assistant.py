"""Gemma 4's MTP drafter (transformers' `Gemma4AssistantForCausalLM`) over the target's paged KV cache.

How it drafts (transformers' SinglePositionMultiTokenCandidateGenerator): the input of a step is the
target's scaled embedding of the last token t (which has no KV in the cache yet) concatenated with a
hidden state ([S, 2B] -> pre_projection -> [S, H]); the first step takes the target's final-normed hidden
state at the position before t, later steps the drafter's own projected output. Every step queries from
t's position p; its layers attend, without writing anything, to the target's cache holding positions
0..p-1: sliding layers to the target's last sliding layer's pages (the last `window + 1` keys, as
transformers' flipped bidirectional sliding mask allows), full layers to the last full layer's pages.
Each step's argmax is the next draft token; the position and the cache stay the same all round.

The target's caches are read through the same attention backend as the target's own layers (one query
row per sequence, a decode step on CUDA), via a ForwardBatch whose "query" stands at p - 1: that makes
the causal bound exactly the cached keys, on the reference and on the kernels alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import gemma_runtime.model.attention  # noqa: F401  (registers the reference backends)
from gemma_runtime.engine_format.spec import AssistantSpec, EngineSpec, LayerSpec, LayerType, TextSpec
from gemma_runtime.engine_format.weights import load_weights
from gemma_runtime.model.forward_batch import ForwardBatch
from gemma_runtime.model.layers import rope_cos_sin, rope_inv_freq
from gemma_runtime.model.registry import create


def shared_kv_layers(target: TextSpec) -> dict[LayerType, int]:
    """The target layer whose cache the drafter's layers of each type read: the last one of that type
    (transformers marks it "store" in `kv_sharing_modes` and returns its states as `shared_kv_states`)."""
    return {layer.type: i for i, layer in enumerate(target.layers)}  # later layers overwrite earlier ones


@dataclass
class DraftContext:
    """Where each sequence's drafting starts: the last token's position p (= tokens in the target's
    cache) and the sequence's pages, as the target's ForwardBatch has them."""

    positions: torch.Tensor  # [S] int64, p >= 1
    block_tables: dict[LayerType, torch.Tensor]  # [S, max_blocks] int64 per geometry
    block_size: int
    # sliding layers' keys behind the query at p - 1 (default: the drafter's window + 1); a caller lowers it
    # when the runtime has already reclaimed the oldest of those pages
    key_window: int | None = None

    def key_batch(self) -> ForwardBatch:
        """The attention backend's view: one query per sequence standing at p - 1 over p cached keys."""
        s = self.positions.shape[0]
        rows = torch.arange(s, device=self.positions.device)
        return ForwardBatch(
            input_ids=torch.zeros_like(self.positions),
            positions=self.positions - 1,
            query_start=torch.arange(s + 1, device=self.positions.device),
            context_lens=self.positions,
            slot_mapping={},  # the drafter writes nothing
            block_tables=self.block_tables,
            block_size=self.block_size,
            logits_indices=rows,
            max_query_len=1,
        )


@dataclass
class DraftStep:
    logits: torch.Tensor  # [S, V] float32
    hidden: torch.Tensor  # [S, B] post-projected: the next step's hidden input


@dataclass
class Draft:
    tokens: torch.Tensor  # [S, N] int64: the drafter's argmax at each step (a deterministic proposal)
    logits: torch.Tensor | None  # [S, N, V] float32 (None when not kept)


class Gemma4Assistant:
    def __init__(
        self,
        spec: AssistantSpec,
        weights: dict[str, torch.Tensor],
        target: TextSpec,
        target_embed: torch.Tensor,  # the target's embed_tokens.weight [V, B]
        target_embed_scale: torch.Tensor,  # the target's sqrt(B), rounded to its dtype (a device scalar)
        device: torch.device,
    ):
        self.spec = spec
        self.text = spec.text
        self.w = weights
        self.device = device
        self.target_embed = target_embed
        self.target_embed_scale = target_embed_scale
        self.shared = shared_kv_layers(target)
        self.attention = create("attention", device)
        self.norm = create("norm", device)
        self.linear = create("linear", device)
        self.geglu = create("geglu", device)
        self.inv_freq = [rope_inv_freq(l.head_dim, l.rope_theta, l.rope_angles).to(device) for l in self.text.layers]
        # transformers' bidirectional sliding mask keeps |q - k| <= window over keys that end at p - 1: the
        # last window + 1 keys. Seen from the key batch's query at p - 1, that is a window of window + 1.
        self.key_window = self.text.sliding_window + 1

    # --- one step -----------------------------------------------------------------------------------

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """[S] -> [S, B]: the target's scaled embedding (what transformers' generator concatenates)."""
        return F.embedding(token_ids, self.target_embed) * self.target_embed_scale

    def step(
        self,
        token_ids: torch.Tensor,  # [S]
        hidden: torch.Tensor,  # [S, B]
        ctx: DraftContext,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],  # the TARGET's caches, per target layer
        key_batch: ForwardBatch | None = None,
    ) -> DraftStep:
        batch = key_batch if key_batch is not None else ctx.key_batch()
        dtype = self.w["pre_projection.weight"].dtype
        x = torch.cat([self.embed(token_ids).to(dtype), hidden.to(dtype)], dim=-1)  # [S, 2B]
        x = self.linear(x, self.w, "pre_projection.weight")  # [S, H]
        eps = self.text.rms_norm_eps
        x_in = self.norm(x, self.w["layers.0.input_norm.weight"], eps)
        rope: dict = {}
        n = len(self.text.layers)
        for i, layer in enumerate(self.text.layers):
            key = (layer.head_dim, layer.rope_theta, layer.rope_angles)
            if key not in rope:
                rope[key] = rope_cos_sin(ctx.positions, self.inv_freq[i])
            p = f"layers.{i}."
            cache = kv_caches[self.shared[layer.type]]
            h = self._attention(p, layer, x_in, rope[key], batch, cache, ctx.key_window or self.key_window)
            ffn = self.norm.ffn_prologue(
                h, x, self.w[p + "post_attn_norm.weight"], self.w[p + "pre_ffn_norm.weight"], eps
            )
            m = self.linear(
                self.geglu(self.linear(ffn.mlp_in, self.w, p + "mlp.gate_up_proj.weight")),
                self.w,
                p + "mlp.down_proj.weight",
            )
            w_next = self.w[f"layers.{i + 1}.input_norm.weight" if i + 1 < n else "norm.weight"]
            x, x_in = self.norm.layer_end(
                m, ffn.residual, self.w[p + "post_ffn_norm.weight"], self.w[p + "layer_scalar"], w_next, eps
            )
        # x_in is now the final-normed state: the LM head's input and the next step's (projected) hidden
        return DraftStep(self.logits(x_in), self.linear(x_in, self.w, "post_projection.weight"))

    def _attention(
        self, p: str, layer: LayerSpec, h, cos_sin, batch: ForwardBatch, kv_cache, window: int
    ) -> torch.Tensor:
        nq, d = self.text.num_attention_heads, layer.head_dim
        q = self.linear(h, self.w, p + "attn.q_proj.weight").view(-1, nq, d)  # [S, H] -> [S, nq, d]
        q = self.norm(q, self.w[p + "attn.q_norm.weight"], self.text.rms_norm_eps, rope=cos_sin)
        o = self.attention(q, kv_cache, batch, layer, window)  # [S, nq, d]
        return self.linear(o.reshape(o.shape[0], nq * d), self.w, p + "attn.o_proj.weight")  # [S, H]

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """[S, H] -> [S, V] float32; no soft cap (transformers' assistant applies none)."""
        if self.spec.ordered_embeddings is not None:
            return self._masked_logits(h)
        return F.linear(h, self.w["lm_head.weight"]).float()

    def _masked_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits for the tokens of the top-k vocabulary clusters only; every other token gets the
        smallest of those logits minus one (over the whole batch, as transformers does)."""
        oe, head = self.spec.ordered_embeddings, self.w["lm_head.weight"]
        per_cluster = head.shape[0] // oe.num_centroids
        clusters = F.linear(h, self.w["masked_embedding.centroids.weight"]).topk(oe.top_k, dim=-1).indices  # [S, k]
        table = self.w["masked_embedding.token_ordering"].view(oe.num_centroids, per_cluster)  # [C, V/C]
        tokens = table[clusters].reshape(h.shape[0], -1)  # [S, k, V/C] -> [S, k V/C]
        chosen = torch.einsum("sh,skh->sk", h, head[tokens]).float()  # [S, k V/C]
        # the floor stays on the device (no host read: the drafter's round is captured as a CUDA graph)
        out = (chosen.min() - 1.0).expand(h.shape[0], head.shape[0]).contiguous()  # [S, V]
        return out.scatter_(1, tokens, chosen)

    # --- a round of drafting ------------------------------------------------------------------------

    def propose(
        self,
        last_tokens: torch.Tensor,  # [S] the newest token of each sequence (not yet in the cache)
        last_hidden: torch.Tensor,  # [S, B] the target's final-normed hidden state one position before it
        ctx: DraftContext,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        num_tokens: int,
        keep_logits: bool = True,
    ) -> Draft:
        """num_tokens drafter steps from the same position and cache, each fed its own argmax and
        projected hidden state (transformers' drafter loop). keep_logits=False returns the drafts alone
        (logits None): a captured round then keeps no [S, N, V] buffer."""
        batch = ctx.key_batch()
        tokens, logits = [], []
        tok, hidden = last_tokens, last_hidden
        for _ in range(num_tokens):
            out = self.step(tok, hidden, ctx, kv_caches, batch)
            tok, hidden = out.logits.argmax(dim=-1), out.hidden
            tokens.append(tok)
            if keep_logits:
                logits.append(out.logits)
        stacked = torch.stack(logits, dim=1) if keep_logits else None
        return Draft(torch.stack(tokens, dim=1), stacked)  # [S, N], [S, N, V]


def load_assistant(engine_dir: str | Path, engine: EngineSpec, target, device: torch.device, dtype=None):
    """The engine's drafter beside its loaded target (a Gemma4TextModel, whose embedding it shares).
    dtype: what the drafter computes in (default: as stored; bfloat16 in FP8 engines)."""
    if engine.assistant is None:
        raise ValueError(f"{engine_dir} has no MTP drafter: rebuild it with `make engine ASSISTANT=auto`")
    weights = load_weights(Path(engine_dir) / engine.assistant.folder, device, dtype)
    return Gemma4Assistant(
        engine.assistant, weights, engine.text, target.w["embed_tokens.weight"], target.embed_scale, device
    )
