"""Fault injection into the real engine: make one model step raise, as a device error would."""

from __future__ import annotations

FAULT = "injected fault"


def fail_on_step(monkeypatch, runner, step: int) -> None:
    """The runner's `step`-th launch from now raises RuntimeError(FAULT); every other one runs normally."""
    real_launch, calls = runner.launch, {"n": 0}

    def launch(scheduled):
        calls["n"] += 1
        if calls["n"] == step:
            raise RuntimeError(FAULT)
        return real_launch(scheduled)

    monkeypatch.setattr(runner, "launch", launch)
