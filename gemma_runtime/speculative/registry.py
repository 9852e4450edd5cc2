"""Drafters by the name `--speculative` gives: each entry builds one from the DrafterContext.

"mtp" needs the engine's converted assistant (`make engine ... ASSISTANT=auto`), in the engine
folder's `assistant/` (engines/README.md); its module (`speculative/mtp.py`) is imported only then.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from gemma_runtime.speculative.ngram import NgramDrafter
from gemma_runtime.speculative.protocol import Drafter, DrafterContext

DRAFTER_DIR = "assistant"  # the MTP drafter's folder inside an engine folder


class SpeculativeUnavailable(ValueError):
    """The engine cannot serve the speculation asked for; the message is one line naming the fix."""


def engine_has_drafter(engine_dir: str | Path) -> bool:
    return (Path(engine_dir) / DRAFTER_DIR).is_dir()


def kept_sliding_window(spec, speculative: str) -> int:
    """How far back (in tokens) the sliding layers' pages must be kept: the target's window, or the MTP
    drafter's reach when that is wider. The drafter at position p reads its window + 1 keys ending at
    p - 1 (model/assistant.py), one or two further back than the target's own queries ever look."""
    window = spec.text.sliding_window
    if speculative == "mtp" and spec.assistant is not None:
        window = max(window, spec.assistant.text.sliding_window + 2)
    return window


def missing_drafter_message(engine_dir: str | Path) -> str:
    return (
        f"--speculative mtp: the engine {engine_dir} has no MTP drafter ({DRAFTER_DIR}/); rebuild it with "
        "`make engine MODEL=... ASSISTANT=auto` or use --speculative ngram"
    )


def _ngram(ctx: DrafterContext) -> Drafter:
    return NgramDrafter()


def _mtp(ctx: DrafterContext) -> Drafter:
    if not engine_has_drafter(ctx.engine_dir):
        raise SpeculativeUnavailable(missing_drafter_message(ctx.engine_dir))
    # speculative/mtp.py provides build_drafter(ctx) -> Drafter
    return importlib.import_module("gemma_runtime.speculative.mtp").build_drafter(ctx)


DRAFTERS: dict[str, Callable[[DrafterContext], Drafter]] = {"ngram": _ngram, "mtp": _mtp}


def build_drafter(method: str, ctx: DrafterContext) -> Drafter:
    return DRAFTERS[method](ctx)
