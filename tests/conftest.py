"""Fixtures shared by every tier: a tiny random MoE engine built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def random_tiny_engine_dir(tmp_path_factory) -> Path:
    from engine_builder.convert import build_engine
    from engine_builder.tiny_checkpoint import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("random-tiny")
    ckpt = make_tiny_checkpoint(root / "ckpt", kind="moe", seed=3, sliding_window=8)
    return build_engine(str(ckpt), root / "engines", dtype="float32", progress=False)
