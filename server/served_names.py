"""The model names a server answers to, and the one each response echoes.

A server answers to its served name, the engine's own name and any aliases (`--model-alias`). Like
OpenAI and vLLM with served aliases, every response and stream chunk carries the name the client sent
(a client that asked for `google/gemma-4-26b-a4b-it` matches replies by that name); a request that
names no model gets the served name.
"""

from __future__ import annotations


def echoed_model(ctx, requested: str | None) -> str:
    """The `model` field of a response to a request that asked for `requested` (already checked)."""
    return requested if requested else ctx.model_name
