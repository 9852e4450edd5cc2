"""Resolve `--assistant` (auto, random, a folder, a hub id) to the drafter's local checkpoint folder."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from gemma_runtime.engine_format.spec import TextSpec

from ..errors import BuildError
from ..sources import ALIASES, HUB_ID, TINY_MODEL_NAME, Source, download

RANDOM = "random"  # a tiny random drafter shaped for the target, made by transformers (tests, dry runs)
ASSISTANT_SUFFIX = "-assistant"  # google/gemma-4-26b-a4b-it -> google/gemma-4-26b-a4b-it-assistant


@dataclass(frozen=True)
class AssistantSource:
    """A drafter to convert; `open(target)` yields its local folder (a random one lives only that long)."""

    checkpoint: str  # engine.json assistant.checkpoint: the hub id, the folder, or "random"
    open: Callable[[TextSpec], AbstractContextManager[Path]]


def _hub(hub_id: str) -> AssistantSource:
    return AssistantSource(hub_id, lambda target: nullcontext(download(hub_id)))


def _random() -> AssistantSource:
    @contextmanager
    def ctx(target: TextSpec):
        import tempfile

        from ..tiny.random_assistant import make_random_assistant

        with tempfile.TemporaryDirectory(prefix="gemma4-assistant-") as tmp:
            yield make_random_assistant(Path(tmp) / "assistant", target)

    return AssistantSource(RANDOM, ctx)


def _auto(target: Source) -> AssistantSource:
    """The target's own `-assistant` checkpoint on the hub: known models and hub ids have one."""
    if target.model_name == TINY_MODEL_NAME:
        raise BuildError("--assistant auto: the tiny model has no published drafter; use --assistant random")
    known = set(ALIASES.values())
    hub_id = next((h for h in known if h.lower() == target.model_name), None)
    if hub_id is None and HUB_ID.match(target.checkpoint) and not Path(target.checkpoint).exists():
        hub_id = target.checkpoint
    if hub_id is None:
        raise BuildError(
            f"--assistant auto: no known drafter for {target.checkpoint}; give --assistant <folder or hub id>"
        )
    return _hub(hub_id + ASSISTANT_SUFFIX)


def resolve_assistant(value: str, target: Source) -> AssistantSource:
    key = value.strip()
    if key.lower() == "auto":
        return _auto(target)
    if key.lower() == RANDOM:
        return _random()
    path = Path(key).expanduser()
    if path.is_dir():
        folder = path.resolve()
        return AssistantSource(str(folder), lambda target: nullcontext(folder))
    if HUB_ID.match(key) and not path.exists():
        return _hub(key)
    raise BuildError(f"--assistant {value!r} is neither auto, {RANDOM}, an existing folder, nor a hub id (owner/name)")
