"""bench/spec_decode.py on the tiny engine (CPU): step costs measured for each batch, a verify step of
N + 1 rows per sequence costing at least something, and the curve computed from them as documented."""

from __future__ import annotations

import pytest
import torch

from bench.random_engine import make_random_engine, weights_in_memory
from bench.spec_decode import ACCEPTED_LENGTHS, attach_random_drafter, curve, engine_config, measure
from gemma_runtime.engine.llm_engine import LLMEngine


@pytest.mark.parametrize("method", ["ngram", "mtp"])
def test_step_costs_and_curve(tmp_path, capsys, method):
    device = torch.device("cpu")
    made = make_random_engine("tiny", "bf16", device, tmp_path / "tiny")
    if method == "mtp":  # the drafter converted into the engine folder as ASSISTANT=random does
        attach_random_drafter(made.engine_dir, tmp_path)
    with weights_in_memory(made.weights):
        engine = LLMEngine(made.engine_dir, engine_config(device, method, 2, batches=(1, 2)))
    assert type(engine.speculation.drafter).__name__ == {"ngram": "NgramDrafter", "mtp": "MTPDrafter"}[method]
    free = engine.blocks.num_free
    costs = measure(engine, 2, device, repeats=2, batches=(1, 2))
    assert set(costs) == {1, 2}
    for c in costs.values():
        assert c["plain"] > 0 and c["verify"] > 0 and c["draft"] > 0
        for length, (rate, speedup) in curve(c).items():
            assert rate == pytest.approx(length / (c["draft"] + c["verify"]))
            assert speedup == pytest.approx(rate * c["plain"])
    out = capsys.readouterr().out
    assert "verify step (3 rows each)" in out and all(f"mean accepted length {L}" in out for L in ACCEPTED_LENGTHS)
    assert engine.blocks.num_free == free and not engine.has_unfinished()
