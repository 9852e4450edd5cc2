"""Fixtures shared by every tier: tiny engines built once per test session.

The taught tiny checkpoint takes a minute or two of CPU training, so it is cached under .cache/ keyed by
a hash of everything it depends on (engine_builder/tiny/taught_cache.py): a fresh clone builds it once,
a rerun with unchanged sources reuses it, and so does the builder's CLI in the tests' subprocesses.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run under Triton's CPU interpreter here. Triton reads this when it is first
    # imported, which another test's imports (transformers, torch) may do before the kernel tests.
    os.environ.setdefault("TRITON_INTERPRET", "1")
    if os.environ["TRITON_INTERPRET"] == "1":
        from tests.interpreter_shortcut import install

        install()  # a third less interpreter time in the kernel tests (tests/interpreter_shortcut.py)

_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    # pytest-xdist runs a worker per core: torch's intra-op threads would otherwise oversubscribe the
    # cores (every worker spinning on all of them), which slows the suite down rather than speeding it
    # up. Servers the tests start in subprocesses inherit the same share through the environment.
    _share = max(1, (os.cpu_count() or 1) // _WORKERS)
    torch.set_num_threads(_share)
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE = REPO_ROOT / ".cache" / "taught-tiny"
# the builder's CLI (`--model tiny`) in the tests' subprocesses reuses the same taught checkpoint
os.environ.setdefault("GEMMA4_TINY_CACHE", str(CACHE))


@pytest.fixture(scope="session")
def taught_checkpoint_dir() -> Path:
    """The Hugging Face checkpoint of the taught tiny model (what `make engine MODEL=tiny` trains),
    trained once per source version into .cache/ (engine_builder/tiny/taught_cache.py)."""
    from engine_builder.tiny.taught_cache import cached_taught_checkpoint

    return cached_taught_checkpoint(CACHE)


@pytest.fixture(scope="session")
def taught_engine_dir(taught_checkpoint_dir, tmp_path_factory) -> Path:
    """The taught tiny engine, converted by the builder exactly as `make engine MODEL=tiny` does."""
    from engine_builder.convert import convert_folder
    from engine_builder.sources import TINY_MODEL_NAME

    return convert_folder(
        taught_checkpoint_dir,
        tmp_path_factory.mktemp("taught-engine"),
        engine_name="gemma-4-tiny-it-float32",
        dtype="float32",
        model_name=TINY_MODEL_NAME,
        checkpoint_id="tiny",
        progress=False,
    )


@pytest.fixture(scope="session")
def random_tiny_dense_engine_dir(tmp_path_factory) -> Path:
    """A tiny random dense engine (the 31B's layer structure), text only."""
    from engine_builder.convert import build_engine
    from engine_builder.tiny.random_checkpoint import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("random-tiny-dense")
    ckpt = make_tiny_checkpoint(root / "ckpt", kind="dense", seed=4, sliding_window=8, with_vision=False)
    return build_engine(str(ckpt), root / "engines", dtype="float32", progress=False)


@pytest.fixture(scope="session")
def random_tiny_engine_dir(tmp_path_factory) -> Path:
    """A tiny random MoE engine with a vision tower: seconds to build, for tests that need no sense."""
    from engine_builder.convert import build_engine
    from engine_builder.tiny.random_checkpoint import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("random-tiny")
    ckpt = make_tiny_checkpoint(root / "ckpt", kind="moe", seed=3, sliding_window=8)
    return build_engine(str(ckpt), root / "engines", dtype="float32", progress=False)


@pytest.fixture(scope="session")
def random_tiny_mtp_engine_dir(random_tiny_engine_dir, tmp_path_factory) -> Path:
    """A copy of the tiny random MoE engine with a random MTP drafter converted into its assistant/, as
    `make engine ... ASSISTANT=random` does."""
    from bench.spec_decode import attach_random_drafter

    root = tmp_path_factory.mktemp("random-tiny-mtp")
    shutil.copytree(random_tiny_engine_dir, root / "engine")
    attach_random_drafter(root / "engine", root)
    return root / "engine"
