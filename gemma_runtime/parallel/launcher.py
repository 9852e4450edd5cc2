"""Rank 0's side of tensor parallelism: the server's process owns the scheduler and the sampler and
spawns ranks 1..N-1 itself (torch.multiprocessing, spawn). It loads its own shard (and the vision tower,
which runs on rank 0 alone), agrees on the KV pool sizes, then broadcasts each step's batch before its
own forward. A watcher thread turns a worker's death into a failure: readiness goes 503 with one log
line, and the next step (or the one in flight, whose collective errors or times out) fails its requests
instead of hanging. close() stops every rank; workers also exit when rank 0 disappears."""

from __future__ import annotations

import atexit
import logging
import threading
from pathlib import Path

import torch
import torch.multiprocessing as mp

from gemma_runtime.config import ResolvedConfig, RuntimeConfig
from gemma_runtime.engine.resolve import resolve_config, runtime_dtype
from gemma_runtime.engine_format.spec import EngineSpec
from gemma_runtime.executor.step_graphs import GRAPH_KINDS
from gemma_runtime.parallel.group import agree_on_pages, close_group, free_port, init_group, rank_device
from gemma_runtime.parallel.loading import load_shard
from gemma_runtime.parallel.plan import ShardPlan
from gemma_runtime.parallel.sharded_layers import shard_model
from gemma_runtime.parallel.step_channel import send_batch, send_stop
from gemma_runtime.parallel.worker import WorkerArgs, rank_config, worker_main

log = logging.getLogger(__name__)
WATCH_S = 0.2
STOP_WAIT_S = 10.0


class TensorParallelGroup:
    """Started by LLMEngine when config.tensor_parallel_size > 1; `weights`, `local_spec` and `config`
    are rank 0's, `attach(runner)` makes its ModelRunner broadcast and sum across ranks."""

    def __init__(self, engine_dir: str | Path, spec: EngineSpec, config: RuntimeConfig):
        world = config.tensor_parallel_size
        self.plan = ShardPlan(world, 0, config.enable_expert_parallel)
        self.plan.check(spec.text)  # before anything starts: a size the world does not divide is a user error
        self.spec, self.local_spec = spec, self.plan.local_spec(spec)
        self.device = rank_device(config.device, 0)
        self.failure: str | None = None
        self._closed = False
        ctx = mp.get_context("spawn")
        port = free_port()
        self.doorbells = [ctx.Semaphore(0) for _ in range(1, world)]
        readies = [ctx.Event() for _ in range(1, world)]
        parent = mp.current_process().pid
        self.procs = [
            ctx.Process(
                target=worker_main,
                args=(WorkerArgs(str(engine_dir), config, r, port, parent), self.doorbells[r - 1], readies[r - 1]),
                name=f"gemma-tp-rank{r}",
                daemon=True,
            )
            for r in range(1, world)
        ]
        for p in self.procs:
            p.start()
        atexit.register(self.close)
        try:
            init_group(0, world, port, self.device, config.parallel_timeout_s)
            dtype = runtime_dtype(config, spec)
            self.weights = load_shard(engine_dir, spec, self.plan, self.device, dtype, with_vision=True)
            self._wait_loaded(readies)
            self.config: ResolvedConfig = agree_on_pages(resolve_config(rank_config(config, 0), self.local_spec))
        except BaseException:
            self.close()
            raise
        threading.Thread(target=self._watch, name="tp-watch", daemon=True).start()
        log.info("tensor parallel: %d ranks (pids %s), expert parallel %s", world, self.pids, self.plan.expert_parallel)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    @property
    def healthy(self) -> bool:
        return self.failure is None and not self._closed

    def shard(self, text) -> None:
        """Rank 0's text model (ModelRunner's `shard`, before its graphs are captured): its layers sum
        across ranks."""
        shard_model(text, self.plan.experts(self.spec.text))

    def attach(self, runner) -> None:
        """Rank 0's ModelRunner: each forward, eager or through its step graphs, first broadcasts its batch."""
        embed_dtype = runner.text.w["embed_tokens.weight"].dtype
        runner.text = _Broadcasting(runner.text, 0, self, embed_dtype)
        for kind, graphs in runner.step_graphs.items():
            runner.step_graphs[kind] = _Broadcasting(graphs, GRAPH_KINDS.index(kind) + 1, self, embed_dtype)

    def broadcast(self, batch, embed_dtype, graph: int, run):
        """Wakes the workers, sends them the batch and how to run it (step_channel.py), then runs rank 0's
        part; a failure takes the engine to not-ready."""
        self.ring()
        try:
            send_batch(batch, embed_dtype, graph)
            return run()
        except Exception as e:
            self.fail(f"a tensor-parallel step failed ({e}): the engine is not ready; restart the server")
            raise

    def fail(self, message: str) -> None:
        if self.failure is None:
            self.failure = message
            log.error("%s", message)

    def ring(self) -> None:
        """Before a step: refuse if a rank is gone, else wake every worker for the broadcast."""
        if not self.healthy:
            raise RuntimeError(self.failure or "the tensor-parallel group is closed")
        for bell in self.doorbells:
            bell.release()

    def _wait_loaded(self, readies) -> None:
        for r, (p, ready) in enumerate(zip(self.procs, readies), start=1):
            while not ready.wait(WATCH_S):
                if not p.is_alive():
                    raise RuntimeError(f"tensor-parallel worker rank {r} exited with code {p.exitcode} while loading")

    def _watch(self) -> None:
        while not self._closed and self.failure is None:
            for r, p in enumerate(self.procs, start=1):
                if not p.is_alive() and not self._closed:
                    self.fail(
                        f"tensor-parallel worker rank {r} (pid {p.pid}) exited with code {p.exitcode}: "
                        "the engine is not ready; restart the server"
                    )
            threading.Event().wait(WATCH_S)

    def close(self) -> None:
        """Stops every rank: a stop message when all are well, then join, terminate, kill what is left."""
        if self._closed:
            return
        healthy, self._closed = self.failure is None, True
        if healthy and all(p.is_alive() for p in self.procs):
            try:
                for bell in self.doorbells:
                    bell.release()
                send_stop(self.device)
            except Exception:  # noqa: BLE001  a rank that cannot hear it is terminated below
                log.warning("tensor-parallel stop message failed", exc_info=True)
        for p in self.procs:
            p.join(STOP_WAIT_S if healthy else 0.5)
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(STOP_WAIT_S)
            if p.is_alive():
                p.kill()
                p.join()
        close_group()
        atexit.unregister(self.close)


class _Broadcasting:
    """Rank 0's text model (its eager `forward`) or step graphs (their padded `run`): each call first
    broadcasts its batch and how the workers run it (`graph`: 0 eager, else 1 + the graphs' place in
    executor/step_graphs.GRAPH_KINDS)."""

    def __init__(self, inner, graph: int, group: TensorParallelGroup, embed_dtype: torch.dtype):
        self.inner, self.graph, self.group, self.embed_dtype = inner, graph, group, embed_dtype

    def forward(self, batch, kv_caches):
        return self.group.broadcast(batch, self.embed_dtype, 0, lambda: self.inner.forward(batch, kv_caches))

    def run(self, batch, *args):
        return self.group.broadcast(batch, self.embed_dtype, self.graph, lambda: self.inner.run(batch, *args))

    def __getattr__(self, name):
        return getattr(self.inner, name)
