"""The taught tiny checkpoint, kept between builds in a cache folder when one is given.

Teaching the tiny model takes tens of seconds of CPU (minutes on a busy machine), and the result depends
only on the sources that teach it (this package and the runtime's image preprocessing) and on torch and
transformers. So a folder keyed by a hash of those holds one checkpoint per source version: the first
build trains it, later ones reuse it. `make engine MODEL=tiny` uses the folder that GEMMA4_TINY_CACHE
names (none by default: it trains into a temporary folder); the tests set it to the clone's `.cache/`,
so their session fixture and the builder's CLI share one training.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from pathlib import Path

import torch
import transformers

CACHE_ENV = "GEMMA4_TINY_CACHE"
FOLDER = "gemma-4-tiny-it"


def taught_fingerprint() -> str:
    """A hash of every source file the training reads (the builder's, the runtime's) and of the library
    versions that compute it."""
    import gemma_runtime

    builder = Path(__file__).resolve().parent.parent
    roots = [builder, Path(gemma_runtime.__file__).resolve().parent]
    files = sorted(p for r in roots for p in r.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    h = hashlib.sha256(f"torch {torch.__version__} transformers {transformers.__version__}".encode())
    for p in files:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def cached_taught_checkpoint(root: str | Path) -> Path:
    """The taught tiny checkpoint under root/<fingerprint>/, trained there first if it is not. Processes
    sharing the root (test workers, concurrent builds) take a lock: the first trains, the others wait and
    find it. Checkpoints of other source versions are removed when a new one is trained."""
    from .taught import make_taught_tiny_checkpoint

    root = Path(root)
    folder = root / taught_fingerprint() / FOLDER
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "taught-tiny.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "config.json").is_file():
            for old in root.iterdir():
                if old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
            tmp = folder.with_name(folder.name + ".tmp")
            make_taught_tiny_checkpoint(tmp, seed=0)
            tmp.rename(folder)
    return folder


def cache_root_from_env() -> Path | None:
    value = os.environ.get(CACHE_ENV)
    return Path(value).expanduser() if value else None
