"""Which checkpoint an engine is checked against, and whether it is the one the engine was built from.

REFERENCE defaults to engine.json's source.checkpoint (the folder or hub id `make engine` was given).
Every mistake is one line (server/cli_errors.py): no checkpoint recorded, the tiny demo's (made in a
temporary folder and not kept), a folder that is not there or holds no checkpoint, or a checkpoint
other than the engine's source (its fingerprint, engine_builder/checkpoint.py's source_sha256, differs).
"""

from __future__ import annotations

from pathlib import Path

from engine_builder.checkpoint import Checkpoint
from engine_builder.errors import BuildError
from engine_builder.sources import HUB_ID, download
from gemma_runtime.engine_format.spec import EngineSpec
from server.cli_errors import UserError


def _folder(reference: str) -> Path:
    path = Path(reference).expanduser()
    if path.is_dir():
        return path
    if HUB_ID.match(reference) and not path.exists():
        try:
            return download(reference)  # the Hugging Face cache when it holds a copy; HF_TOKEN for gated ones
        except BuildError as e:
            raise UserError(f"REFERENCE={reference}: {e}") from None
    raise UserError(
        f"REFERENCE={reference} does not exist: pass the Hugging Face checkpoint folder (or hub id) the engine was built from"
    )


def reference_source(spec: EngineSpec, reference: str | None) -> str:
    if reference:
        return reference
    recorded = (spec.source or {}).get("checkpoint")
    if not recorded:
        raise UserError(
            "the engine's engine.json records no source checkpoint: pass REFERENCE=<checkpoint folder or hub id>"
        )
    if recorded == "tiny":
        raise UserError(
            "the engine was built from the tiny demo model, whose checkpoint lived in a temporary folder and is gone: "
            "pass REFERENCE=<checkpoint folder>"
        )
    return recorded


def resolve_reference(spec: EngineSpec, engine: Path, reference: str | None, *, any_checkpoint: bool = False) -> Path:
    """The reference checkpoint's folder, checked to be the engine's source (unless any_checkpoint)."""
    source = reference_source(spec, reference)
    folder = _folder(source)
    try:
        ckpt = Checkpoint(folder)
    except BuildError as e:
        raise UserError(f"REFERENCE={source} is not a Hugging Face Gemma 4 checkpoint: {e}") from None
    recorded = (spec.source or {}).get("sha256")
    if not any_checkpoint and recorded and ckpt.sha256() != recorded:
        raise UserError(
            f"REFERENCE={source} is not the checkpoint {engine} was built from (its config and weight files "
            f"differ from those engine.json records): pass that checkpoint, or VERIFY_ARGS=--any-checkpoint to compare anyway"
        )
    text = ckpt.config.get("text_config", ckpt.config)
    theirs = (text.get("vocab_size"), text.get("hidden_size"), text.get("num_hidden_layers"))
    ours = (spec.text.vocab_size, spec.text.hidden_size, spec.text.num_layers)
    if theirs != ours:
        raise UserError(
            f"REFERENCE={source} does not match {engine}: vocabulary, hidden size and layers {theirs} against the engine's {ours}"
        )
    return folder
