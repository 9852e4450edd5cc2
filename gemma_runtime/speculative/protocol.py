"""The drafter contract: what the engine hands a drafter each step, and what it gets back.

A drafter is any object with `propose(requests) -> list[Draft]` (and `release(request_id)` to drop any
state it keeps per sequence). It is called on the engine thread, once per step, with the sequences that
speculate this step, before the step is scheduled. The MTP drafter (Gemma 4's `-assistant` model, as
transformers' `Gemma4AssistantForCausalLM` in assisted generation) reads, per sequence:

- `last_token_id` (the newest token, whose KV the target has not computed yet) and its position
  `position` (= len(token_ids) - 1): the drafter embeds it with the target's embedding and concatenates
  the target's hidden state, as `candidate_generator.py` does with `inputs_embeds = cat(embed(last_token),
  last_hidden_state)`;
- `hidden`: the target's final-normed hidden state (transformers' `hidden_states[-1]`) at the position
  before `position`, i.e. the row whose logits produced `last_token_id`: after a verify step that is the
  row of the last accepted draft (transformers' `n_last_matches`), after a plain step the step's last row.
  None when the target has not produced one for this sequence since it was (re)prefilled;
- `block_tables` and `kv_caches` (the runner's paged caches, one (K, V) per target layer, slots =
  page * block_size + offset): the target's KV of positions [0, position) is valid, in both geometries
  (sliding pages behind the window may be reclaimed: NO_BLOCK). Transformers' `shared_kv_states` are the
  last sliding and the last full layer's K/V: `kv_layer_of(layer_type)` below finds them.

It returns at most `max_tokens` draft ids per sequence (fewer or none is fine) and, for a drafter whose
drafts are sampled from a distribution (`Draft.probs`, [n, V] float32 rows summing to 1), those rows, so
sampled requests can use rejection sampling. `probs=None` means deterministic drafts (one-hot).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from gemma_runtime.api import SamplingParams
    from gemma_runtime.scheduling.block_manager import BlockTables


@dataclass(frozen=True)
class DraftRequest:
    request_id: str
    token_ids: list[int]  # prompt + resolved output, the newest last
    position: int  # position of the newest token (len(token_ids) - 1)
    max_tokens: int  # propose at most this many (>= 1)
    hidden: torch.Tensor | None  # [H] final-normed target hidden state at position - 1 (see module doc)
    block_tables: BlockTables  # the sequence's pages, both geometries
    sampling: SamplingParams  # temperature etc. of the request (a sampling drafter may follow them)

    @property
    def last_token_id(self) -> int:
        return self.token_ids[-1]


@dataclass(frozen=True)
class Draft:
    token_ids: list[int]  # [n], n <= max_tokens
    probs: torch.Tensor | None = None  # [n, V] float32: the draft distribution of each, None: one-hot


@dataclass(frozen=True)
class DrafterContext:
    """What a drafter factory gets once at engine start (registry.py): the engine and its runner's state."""

    engine_dir: str
    spec: object  # EngineSpec
    config: object  # ResolvedConfig
    num_speculative_tokens: int
    kv_caches: list  # [(K, V)] per target layer: [slots, kv_heads, head_dim] each
    embed_weight: object  # the target's embedding table [V, H] (tied with the LM head)
    # batch sizes a drafter may pad its rounds to (and capture as CUDA graphs when config.capture_graphs);
    # empty: eager only
    graph_batch_sizes: tuple[int, ...] = ()

    def kv_layer_of(self, layer_type: str) -> int:
        """Index of the last target layer of this type ("full" or "sliding"): whose KV the drafter reads."""
        layers = self.spec.text.layers
        return max(i for i, layer in enumerate(layers) if layer.type == layer_type)


class Drafter(Protocol):
    def propose(self, requests: list[DraftRequest]) -> list[Draft]:
        """One Draft per request, in order."""
        ...

    def release(self, request_id: str) -> None:
        """The sequence finished, was aborted or preempted: drop what is kept for it."""
        ...
