"""`make bench BENCH_ARGS="--tensor-parallel-size N [--enable-expert-parallel]"`: the random engine across N
ranks. Single-rank runs hand the engine its weights in memory; the other ranks are processes of their
own that read their shards from the engine folder, so here the random weights are written there first
(safetensors, on the host: the disk must hold one copy of the model)."""

from __future__ import annotations

from dataclasses import replace

from safetensors.torch import save_file

from bench.random_engine import RandomEngine
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine
from gemma_runtime.engine_format.files import WEIGHTS_FILE


def parallel_system(system: str, tensor_parallel_size: int, expert_parallel: bool) -> str:
    """The figures' system name: "ours-tp2", "ours-tp4-ep"; a single rank keeps its own."""
    if tensor_parallel_size == 1:
        return system
    return f"{system}-tp{tensor_parallel_size}" + ("-ep" if expert_parallel else "")


def open_parallel(made: RandomEngine, config: RuntimeConfig, tensor_parallel_size: int, expert_parallel: bool):
    """Writes the weights beside engine.json, drops the in-memory copy, and starts the ranks."""
    save_file({k: v.detach().contiguous().cpu() for k, v in made.weights.items()}, made.engine_dir / WEIGHTS_FILE)
    made.weights.clear()
    return LLMEngine(
        made.engine_dir,
        replace(config, tensor_parallel_size=tensor_parallel_size, enable_expert_parallel=expert_parallel),
    )
