"""The taught tiny checkpoint's cache (engine_builder/tiny/taught_cache.py): trained once per source
version, reused after, older versions removed, and the builder's `tiny` source uses it only when
GEMMA4_TINY_CACHE names a folder. The training itself is replaced by a recorder here (tests/unit/
test_taught_tiny.py trains the real one); what is tested is when it runs and where its result goes."""

from __future__ import annotations

from pathlib import Path

import engine_builder.tiny.taught as taught
import engine_builder.tiny.taught_cache as cache
from engine_builder.sources import resolve


def recording_trainer(calls: list):
    def train(out_dir, seed=0, **_):
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text("{}")
        calls.append(out)
        return out

    return train


def test_trained_once_per_source_version(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(taught, "make_taught_tiny_checkpoint", recording_trainer(calls))
    first = cache.cached_taught_checkpoint(tmp_path)
    assert cache.cached_taught_checkpoint(tmp_path) == first and len(calls) == 1
    assert first.parent.name == cache.taught_fingerprint() and (first / "config.json").is_file()
    monkeypatch.setattr(cache, "taught_fingerprint", lambda: "another-version")
    second = cache.cached_taught_checkpoint(tmp_path)
    assert len(calls) == 2 and second.parent.name == "another-version"
    assert not first.exists()  # the older version's checkpoint is gone


def test_the_tiny_source_uses_the_cache_only_when_named(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(taught, "make_taught_tiny_checkpoint", recording_trainer(calls))
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "kept"))
    for _ in range(2):
        with resolve("tiny").open() as checkpoint:
            assert checkpoint.is_relative_to(tmp_path / "kept")
    assert len(calls) == 1
    monkeypatch.delenv(cache.CACHE_ENV)
    with resolve("tiny").open() as checkpoint:
        assert not checkpoint.is_relative_to(tmp_path)  # a temporary folder, gone after the build
    assert len(calls) == 2 and not checkpoint.exists()
