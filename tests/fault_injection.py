"""Fault injection into the real engine: make one model step raise, as a device error would."""

from __future__ import annotations

FAULT = "injected fault"


def fail_on_step(monkeypatch, runner, step: int) -> None:
    """The runner's `step`-th call from now raises RuntimeError(FAULT); every other call runs normally."""
    real_run, calls = runner.run, {"n": 0}

    def run(scheduled):
        calls["n"] += 1
        if calls["n"] == step:
            raise RuntimeError(FAULT)
        return real_run(scheduled)

    monkeypatch.setattr(runner, "run", run)
