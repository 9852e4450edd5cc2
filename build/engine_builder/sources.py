"""Resolve `--model` (tiny, 26b, 31b, a local folder, a hub id) to a local checkpoint folder and names."""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from .errors import BuildError

TINY_MODEL_NAME = "google/gemma-4-tiny-it"
# short names users type -> hub ids (lowercase: served model names follow the NIM's lowercase ids)
ALIASES: dict[str, str] = {
    "26b": "google/gemma-4-26b-a4b-it",
    "31b": "google/gemma-4-31b-it",
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# files the builder reads; the hub repos also carry other formats we never need
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model"]


@dataclass(frozen=True)
class Source:
    """A checkpoint to build from. `open()` yields its local folder (a tiny checkpoint lives only that long)."""

    model_name: str  # engine.json model_name (what the server calls the model)
    checkpoint: str  # engine.json source.checkpoint: the hub id or the folder given
    base_name: str  # engine folder name without the dtype
    default_dtype: str
    open: Callable[[], AbstractContextManager[Path]]


def _tiny() -> AbstractContextManager[Path]:
    import tempfile
    from contextlib import contextmanager

    from .errors import BuildError
    from .tiny.taught import make_taught_tiny_checkpoint
    from .tiny.taught_cache import cache_root_from_env, cached_taught_checkpoint

    @contextmanager
    def ctx():
        # The demo model is the tiny MoE taught a handful of Gemma 4 replies (answers, thinking, tool
        # calls, an image), so that `make serve` and the end-to-end tests see every output structure.
        # With GEMMA4_TINY_CACHE set, it is trained once per source version into that folder.
        cache = cache_root_from_env()
        if cache is not None:
            yield teach(lambda: cached_taught_checkpoint(cache))
            return
        with tempfile.TemporaryDirectory(prefix="gemma4-tiny-") as tmp:
            yield teach(lambda: make_taught_tiny_checkpoint(Path(tmp) / "gemma-4-tiny-it"))

    def teach(train: Callable[[], Path]) -> Path:
        try:
            return train()
        except RuntimeError as exc:
            raise BuildError(f"teaching the tiny model failed: {exc}") from exc

    return ctx()


def download(hub_id: str) -> Path:
    """snapshot_download with every network failure turned into one line (HF_TOKEN is read by huggingface_hub)."""
    import httpx
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(hub_id, allow_patterns=DOWNLOAD_PATTERNS))
    except GatedRepoError:
        raise BuildError(f"{hub_id} is gated: accept its license on huggingface.co and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise BuildError(f"{hub_id} was not found on the Hugging Face Hub (or it is private: set HF_TOKEN)") from None
    except (LocalEntryNotFoundError, httpx.TransportError):
        raise BuildError(
            f"cannot download {hub_id}: the Hugging Face Hub is unreachable (no network?) and no local copy is cached"
        ) from None
    except HfHubHTTPError as e:
        raise BuildError(f"cannot download {hub_id}: {str(e).splitlines()[0]}") from None


def _hub(hub_id: str) -> Source:
    return Source(
        model_name=hub_id.lower(),
        checkpoint=hub_id,
        base_name=hub_id.rsplit("/", 1)[-1].lower(),
        default_dtype="bfloat16",
        open=lambda: nullcontext(download(hub_id)),
    )


def resolve(model: str) -> Source:
    key = model.strip()
    if key.lower() == "tiny":
        return Source(TINY_MODEL_NAME, "tiny", "gemma-4-tiny-it", "float32", _tiny)
    if key.lower() in ALIASES:
        return _hub(ALIASES[key.lower()])
    path = Path(key).expanduser()
    if path.is_dir():
        folder = path.resolve()
        base = folder.name.lower()
        # a local copy of a known model serves under the model's hub id, as the NIM names it
        known = {hub.rsplit("/", 1)[-1]: hub for hub in ALIASES.values()}
        return Source(known.get(base, base), str(folder), base, "bfloat16", lambda: nullcontext(folder))
    if HUB_ID.match(key) and not path.exists():
        return _hub(key)
    raise BuildError(
        f"--model {model!r} is neither tiny, {', '.join(ALIASES)}, an existing folder, nor a hub id (owner/name)"
    )
