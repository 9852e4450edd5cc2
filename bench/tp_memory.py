"""Peak host memory while a tensor-parallel engine loads: each rank's against one process's, on the CPU.

A random dense engine big enough that its weights dominate (float32, ~2.6 GB at the defaults; the tiny
tokenizer's vocabulary keeps the replicated embedding small) is written to a temp folder, then:

- load only: a fresh process reads the weights as one process does (`load_weights`), or as rank r of N
  does (`load_shard`: its slices straight from the safetensors); its VmHWM is reset once the imports are
  done, so the peak's growth over that baseline is what loading cost;
- whole start: a fresh process starts `LLMEngine` (load, KV pools, model; TP: rank 0 spawns the
  workers over gloo), then reads its own VmHWM and each worker's (the workers' includes their imports).

    PYTHONPATH=.:build .venv/bin/python -m bench.tp_memory [--layers 6] [--hidden 2560] [--tp 2]

Prints one JSON line per measurement and a table (MB). Linux only (/proc/<pid>/status).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from bench.random_engine import MODELS, SLIDING_WINDOW, _layer_types, make_random_engine
from gemma_runtime.engine_format.files import WEIGHTS_FILE

MB = 1024**2
REPO_ROOT = Path(__file__).resolve().parents[1]

# Shared by both child scripts: VmRSS / VmHWM of a pid, and the reset of our own peak (clear_refs 5).
_PRELUDE = r"""
import json, sys
def status(key, pid="self"):
    return next(int(l.split()[1]) * 1024 for l in open(f"/proc/{pid}/status") if l.startswith(key + ":"))
def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS: only what follows counts
"""

_LOAD = (
    _PRELUDE
    + r"""
import torch
import gemma_runtime.parallel.loading as loading
from gemma_runtime.engine_format import weights as engine_weights
from gemma_runtime.engine_format.spec import EngineSpec
from gemma_runtime.parallel.plan import ShardPlan
engine_dir, world, rank = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
spec, cpu = EngineSpec.load(engine_dir), torch.device("cpu")
# RssAnon (copies) and RssFile (pages of the memory-mapped safetensors) sampled after every tensor read
most = {"RssAnon": 0, "RssFile": 0}
def sampled(engine_dir, device, dtype=None, read=None):
    def read_and_sample(handle, name):
        t = read(handle, name) if read is not None else handle.get_tensor(name)
        for k in most:
            most[k] = max(most[k], status(k))
        return t
    return engine_weights.load_weights(engine_dir, device, dtype, read=read_and_sample)
loading.load_weights = sampled
base, base_anon, base_file = status("VmRSS"), status("RssAnon"), status("RssFile")
reset_peak()
if world == 1:
    w = sampled(engine_dir, cpu, torch.float32)
else:
    w = loading.load_shard(engine_dir, spec, ShardPlan(world, rank, False), cpu, torch.float32, with_vision=rank == 0)
loaded = status("VmHWM")
for t in w.values():  # what the first forward does: read every weight (lazy mmap pages come in now)
    t.sum()
held = sum(t.numel() * t.element_size() for t in w.values())
print(json.dumps({"baseline": base, "peak": loaded, "peak_touched": status("VmHWM"), "held": held,
                  "anon": most["RssAnon"] - base_anon, "file": most["RssFile"] - base_file}))
"""
)

_START = (
    _PRELUDE
    + r"""
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine
engine_dir, world = sys.argv[1], int(sys.argv[2])
base = status("VmRSS")
reset_peak()
config = RuntimeConfig(device="cpu", tensor_parallel_size=world, max_num_seqs=4, max_model_len=1024, kv_cache_bytes=1 << 24)
engine = LLMEngine(engine_dir, config)
started = status("VmHWM")
for t in engine.runner.text.w.values():  # as the first step would (a worker's shard is resident already)
    t.sum()
workers = engine.parallel.pids if engine.parallel is not None else []
# at the end, what is private (RssAnon) and what is the engine file's pages (RssFile: page cache the ranks share)
ranks = [dict(peak=started, peak_touched=status("VmHWM"))] + [dict(peak=status("VmHWM", p)) for p in workers]
for r, pid in zip(ranks, ["self", *workers]):
    r.update(anon_end=status("RssAnon", pid), file_end=status("RssFile", pid))
print(json.dumps({"baseline": base, "ranks": ranks}))
engine.close()
"""
)


def make_engine(out_dir: Path, layers: int, hidden: int, intermediate: int) -> int:
    """A random dense float32 engine in out_dir (weights written beside engine.json); returns its bytes."""
    MODELS["tp-memory"] = dict(
        kind="dense",
        num_layers=layers,
        text=dict(
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=256,
            global_head_dim=512,
            num_global_key_value_heads=2,
            max_position_embeddings=4096,
            layer_types=_layer_types(layers),
        ),
    )
    SLIDING_WINDOW["tp-memory"] = 512
    made = make_random_engine("tp-memory", "float32", torch.device("cpu"), out_dir)
    total = sum(t.numel() * t.element_size() for t in made.weights.values())
    save_file(made.weights, out_dir / WEIGHTS_FILE)
    made.weights.clear()  # this process holds nothing while the children measure
    return total


def run_child(script: str, *args: str) -> dict:
    env_path = f"{REPO_ROOT}:{REPO_ROOT / 'build'}"
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": env_path, "OMP_NUM_THREADS": "1"},
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measuring failed ({proc.returncode}): {proc.stderr.strip()[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(engine_dir: Path, world: int) -> list[dict]:
    """One row per (what, world, rank), in bytes: baseline (RSS after the imports), peak (VmHWM once loaded
    or started), touched (VmHWM once every weight was read); load rows add the bytes held and the most
    RssAnon / RssFile grew while reading, start rows RssAnon / RssFile at the end. Workers' peaks include
    their imports (their VmHWM cannot be reset from outside), and nothing touches their weights."""
    rows = []
    for w, ranks in ((1, [0]), (world, range(world))):
        for rank in ranks:
            rows.append(dict(what="load", world=w, rank=rank, **run_child(_LOAD, str(engine_dir), str(w), str(rank))))
    for w in (1, world):
        r = run_child(_START, str(engine_dir), str(w))
        rows += [dict(what="start", world=w, rank=rank, **ranked) for rank, ranked in enumerate(r["ranks"])]
        rows[-w]["baseline"] = r["baseline"]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=2560)
    p.add_argument("--intermediate", type=int, default=10240)
    p.add_argument("--tp", type=int, default=2, help="tensor-parallel size (dense: plain TP)")
    p.add_argument("--keep", default=None, help="work in this folder and keep it (default: a temp folder)")
    args = p.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="tp-memory-"))
    try:
        total = make_engine(root / "engine", args.layers, args.hidden, args.intermediate)
        rows = measure(root / "engine", args.tp)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"weights_bytes": total, "tp": args.tp, "rows": rows}))
    print(f"weights {total / MB:.0f} MB; one shard ~{total / args.tp / MB:.0f} MB")
    keys = ("held", "baseline", "peak", "peak_touched", "anon", "file", "anon_end", "file_end")
    print(f"{'what':6} {'world':>5} {'rank':>4} " + " ".join(f"{k:>12}" for k in keys) + "   (MB)")
    for r in rows:
        cells = " ".join(f"{r[k] / MB:>12.0f}" if k in r else f"{'-':>12}" for k in keys)
        print(f"{r['what']:6} {r['world']:>5} {r['rank']:>4} {cells}")


if __name__ == "__main__":
    main()
