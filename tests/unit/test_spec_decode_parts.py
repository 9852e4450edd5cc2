"""The small parts of speculative decoding: prompt lookup, the accept rule, the page rollback, the flags
and the Triton parameters, and the engine's one-line refusal of `mtp` without a drafter."""

from __future__ import annotations

import pytest

from gemma_runtime.config import RuntimeConfig
from gemma_runtime.scheduling.block_manager import NO_BLOCK, BlockManager, BlockTables
from gemma_runtime.speculative.ngram import NgramDrafter
from gemma_runtime.speculative.verify import accepted_run
from server.__main__ import parse_args, runtime_config_from_args
from triton_bridge.spec_params import speculative_overrides


def test_prompt_lookup_takes_the_latest_longest_match():
    d = NgramDrafter(min_n=1, max_n=3)
    assert d.lookup([1, 2, 3, 9, 1, 2, 3, 7, 8, 1, 2, 3], 2) == [7, 8]  # latest 3-gram match
    assert d.lookup([5, 6, 5], 3) == [6, 5]  # 1-gram: what followed the earlier 5
    assert d.lookup([1, 2, 3, 4], 3) == []  # nothing repeats
    assert d.lookup([4, 4, 4, 4], 3) == [4]  # the latest match ends right before the last token


def test_accept_rule():
    assert accepted_run([5, 6, 7, 8], [5, 6, 7]) == [5, 6, 7, 8]  # all kept + the bonus token
    assert accepted_run([5, 9, 7, 8], [5, 6, 7]) == [5, 9]  # the first mismatch ends the run
    assert accepted_run([4, 6, 7, 8], [5, 6, 7]) == [4]
    assert accepted_run([3], []) == [3]


def test_trim_returns_the_rejected_pages_of_both_pools():
    bm = BlockManager(4, 32, 32, sliding_window=8)
    t = BlockTables()
    bm.allocate(t, 0, 14)  # pages 0..3
    bm.allocate(t, 14, 1 + 4)  # a decode token and 4 drafts: positions 14..18, pages 4
    full_free, sliding_free = bm.full.num_free, bm.sliding.num_free
    bm.trim(t, 16)  # two kept: 16 tokens computed, 4 pages
    assert len(t.full) == len(t.sliding) == 4 and t.trimmed_to == 4
    assert bm.full.num_free == full_free + 1 and bm.sliding.num_free == sliding_free + 1
    assert t.sliding[: t.sliding_reclaimed] == [NO_BLOCK] * t.sliding_reclaimed  # reclaimed pages stay reclaimed


def test_flags_and_triton_parameters():
    args = parse_args(["--engine", "e", "--device", "cpu", "--speculative", "ngram", "--num-speculative-tokens", "5"])
    config = runtime_config_from_args(args)
    assert (config.speculative, config.num_speculative_tokens) == ("ngram", 5)
    assert runtime_config_from_args(parse_args(["--engine", "e", "--device", "cpu"])).speculative == "off"
    assert speculative_overrides(
        {"speculative": "mtp", "num_speculative_tokens": "2", "speculative_max_batch": ""}
    ) == {
        "speculative": "mtp",
        "num_speculative_tokens": 2,
    }
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        speculative_overrides({"num_speculative_tokens": "many"})
    with pytest.raises(ValueError, match="speculative must be one of"):
        RuntimeConfig(speculative="eagle")


def test_engine_refuses_mtp_without_a_drafter(random_tiny_dense_engine_dir):
    from gemma_runtime.engine.llm_engine import LLMEngine
    from gemma_runtime.speculative.registry import SpeculativeUnavailable

    with pytest.raises(SpeculativeUnavailable, match="ASSISTANT=auto"):
        LLMEngine(random_tiny_dense_engine_dir, RuntimeConfig(speculative="mtp"))
