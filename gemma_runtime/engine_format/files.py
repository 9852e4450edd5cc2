"""The file names of an engine directory (engines/README.md), for the builder that writes them and the
runtime, server and Triton side that read them. Hugging Face checkpoints use the same weight names."""

from __future__ import annotations

ENGINE_JSON = "engine.json"
GENERATION_CONFIG = "generation_config.json"
CHAT_TEMPLATE = "chat_template.jinja"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
WEIGHTS_FILE = "model.safetensors"  # the weights in one file
WEIGHTS_INDEX = "model.safetensors.index.json"  # or in shards, named by this index's weight_map
ASSISTANT_DIR = "assistant"  # the MTP drafter's sub-folder: its own weights (engine.json "assistant")


def shard_names(n: int) -> list[str]:
    """The weight files of an engine written in n shards (one: WEIGHTS_FILE)."""
    if n == 1:
        return [WEIGHTS_FILE]
    return [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
