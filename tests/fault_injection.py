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


def serve_failing_on_step(step: int, engine_dir: str, config, conn) -> None:
    """The engine worker (`--engine-process`) whose runner's `step`-th launch raises RuntimeError(FAULT):
    `EngineProcess(..., worker=functools.partial(serve_failing_on_step, step))` runs it in the worker."""
    from gemma_runtime.engine.engine_worker import serve
    from gemma_runtime.executor.model_runner import ModelRunner

    real_launch, calls = ModelRunner.launch, {"n": 0}

    def launch(self, scheduled):
        calls["n"] += 1
        if calls["n"] == step:
            raise RuntimeError(FAULT)
        return real_launch(self, scheduled)

    ModelRunner.launch = launch
    serve(engine_dir, config, conn)
