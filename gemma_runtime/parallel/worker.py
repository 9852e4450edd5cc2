"""Ranks 1..N-1: a process spawned by rank 0 (launcher.py) that loads its shard and runs every step rank
0 broadcasts, until rank 0 says stop or goes away. It never samples and never schedules.

Between steps a worker waits on its doorbell (a semaphore rank 0 releases before each step's broadcast),
not inside a collective: a collective's timeout bounds a step, and an idle server must not trip it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, replace

import torch

from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.resolve import resolve_config, runtime_dtype
from gemma_runtime.engine_format.spec import EngineSpec
from gemma_runtime.executor.model_runner import ModelRunner
from gemma_runtime.executor.step_graphs import GRAPH_KINDS
from gemma_runtime.model.forward_batch import ForwardBatch
from gemma_runtime.parallel.group import agree_on_pages, close_group, init_group, rank_device
from gemma_runtime.parallel.loading import load_shard
from gemma_runtime.parallel.plan import ShardPlan
from gemma_runtime.parallel.sharded_layers import shard_model
from gemma_runtime.parallel.step_channel import receive

log = logging.getLogger(__name__)
PARENT_POLL_S = 0.5


@dataclass(frozen=True)
class WorkerArgs:
    engine_dir: str
    config: RuntimeConfig  # rank 0's (tensor_parallel_size, enable_expert_parallel, parallel_timeout_s)
    rank: int
    port: int
    parent_pid: int


def rank_config(config: RuntimeConfig, rank: int) -> RuntimeConfig:
    """What rank `rank` resolves: its own device, and the MoE's dense MLP on the main stream. Every rank
    captures the same step graphs, collectives inside (ModelRunner, after `shard`); a MoE layer's dense
    MLP on a side stream would put its all-reduce beside the experts' one on another stream, and two
    collectives of one NCCL communicator running at once may wait on each other for ever."""
    return replace(config, device=str(rank_device(config.device, rank)), moe_side_stream=False)


def build_rank(args: WorkerArgs, spec: EngineSpec, plan: ShardPlan, device: torch.device, ready) -> ModelRunner:
    local = plan.local_spec(spec)
    weights = load_shard(args.engine_dir, spec, plan, device, runtime_dtype(args.config, spec), with_vision=False)
    ready.set()
    resolved = agree_on_pages(resolve_config(rank_config(args.config, args.rank), local))
    return ModelRunner(
        replace(local, vision=None), weights, resolved, shard=lambda text: shard_model(text, plan.experts(spec.text))
    )


def run_step(runner: ModelRunner, batch: ForwardBatch, graph: int) -> None:
    """A broadcast step as rank 0 runs it: eagerly (graph 0), or through the step graphs of kind
    GRAPH_KINDS[graph - 1], padded from the same batch (so every rank replays the same graph, its
    collectives lined up)."""
    if graph == 0:
        runner.text.forward(batch, runner.kv_caches)
        return
    query_lens = (batch.query_start[1:] - batch.query_start[:-1]).tolist()
    runner.step_graphs[GRAPH_KINDS[graph - 1]].run(batch, query_lens)


def _exit_with_parent(parent_pid: int) -> None:
    """No orphans: when rank 0 is gone (killed, even by SIGKILL), so is this process."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def worker_main(args: WorkerArgs, doorbell, ready) -> None:
    # Out of rank 0's process group: a Ctrl-C or a SIGTERM to the group reaches rank 0 alone, which drains
    # its requests and then stops us (a worker killed first would fail them).
    os.setsid()
    threading.Thread(target=_exit_with_parent, args=(args.parent_pid,), daemon=True).start()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s tp-rank{args.rank}: %(message)s")
    c = args.config
    device = rank_device(c.device, args.rank)
    try:
        init_group(args.rank, c.tensor_parallel_size, args.port, device, c.parallel_timeout_s)
        spec = EngineSpec.load(args.engine_dir)
        plan = ShardPlan(c.tensor_parallel_size, args.rank, c.enable_expert_parallel)
        runner = build_rank(args, spec, plan, device, ready)
        embed_dtype = runner.text.w["embed_tokens.weight"].dtype
        with torch.inference_mode():
            while True:
                while not doorbell.acquire(timeout=PARENT_POLL_S):
                    pass
                step = receive(device, embed_dtype)
                if step is None:
                    break
                run_step(runner, *step)
    except Exception:
        log.exception("tensor-parallel worker rank %d failed", args.rank)
        sys.exit(1)
    finally:
        close_group()
