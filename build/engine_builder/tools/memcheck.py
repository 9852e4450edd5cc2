"""Conversion memory checks: random HF-named checkpoints of any size, and a measured conversion subprocess.

The checkpoint is written shard by shard straight from a meta-device model's names and shapes, so a 1 GB
checkpoint never exists in memory at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from gemma_runtime.engine_format.files import GENERATION_CONFIG, WEIGHTS_INDEX

from ..tiny.random_checkpoint import GENERATION_DEFAULTS, tiny_config
from ..tiny.tokenizer import make_tiny_tokenizer


def write_random_checkpoint(
    out_dir: str | Path,
    *,
    hidden_size: int = 256,
    intermediate_size: int = 512,
    num_layers: int = 6,
    num_experts: int = 8,
    moe_intermediate_size: int = 128,
    head_dim: int = 64,
    dtype: torch.dtype = torch.bfloat16,
    shard_bytes: int = 64 * 1024**2,
    seed: int = 0,
) -> tuple[Path, int]:
    """Write a random MoE Gemma 4 checkpoint (HF names, sharded, config, tokenizer); returns (folder, weight bytes)."""
    from transformers import Gemma4ForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_tokenizer(out)
    overrides = dict(
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_experts=num_experts,
        moe_intermediate_size=moe_intermediate_size,
        head_dim=head_dim,
        global_head_dim=2 * head_dim,
        num_attention_heads=max(1, hidden_size // head_dim),
        num_key_value_heads=max(1, hidden_size // head_dim // 2),
        num_global_key_value_heads=1,
    )
    config = tiny_config(tokenizer, "moe", num_layers=num_layers, text_overrides=overrides)
    with torch.device("meta"):  # names and shapes only, no memory
        shapes = {
            k: tuple(v.shape)
            for k, v in Gemma4ForConditionalGeneration(config).state_dict().items()
            if k != "lm_head.weight"
        }
    config.architectures = ["Gemma4ForConditionalGeneration"]
    config.save_pretrained(str(out))
    (out / GENERATION_CONFIG).write_text(json.dumps(GENERATION_DEFAULTS) + "\n")
    g = torch.Generator().manual_seed(seed)
    names = list(shapes)
    itemsize = torch.empty((), dtype=dtype).element_size()
    shards: list[list[str]] = [[]]
    size = 0
    for name in names:
        nbytes = itemsize * int(torch.Size(shapes[name]).numel())
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    weight_map, total = {}, 0
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {
            n: (torch.randn(shapes[n], generator=g) * 0.05 + (1.0 if "norm" in n or "scal" in n else 0.0)).to(dtype)
            for n in shard
        }
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        total += sum(t.numel() * itemsize for t in tensors.values())
        weight_map.update({n: fname for n in shard})
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / WEIGHTS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return out, total


_MEASURE = r"""
import json, sys, time
from engine_builder.convert import build_engine
from transformers import AutoTokenizer  # imported before the baseline: only conversion should count

def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))

folder, out_dir, dtype, shard_bytes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM (peak RSS) to the current RSS
start = time.perf_counter()
path = build_engine(folder, out_dir, dtype=dtype, progress=False, max_shard_bytes=shard_bytes)
seconds = time.perf_counter() - start
print(json.dumps({"engine": str(path), "seconds": seconds, "baseline_rss": base, "peak_rss": status("VmHWM")}))
"""


def measure_conversion(
    folder: str | Path, out_dir: str | Path, *, dtype: str = "bfloat16", shard_bytes: int = 2 * 1024**3
) -> dict:
    """Convert in a fresh Python process; returns seconds, baseline_rss and peak_rss (bytes) of that process.

    Linux only: the peak is VmHWM after resetting it through /proc/self/clear_refs once imports are done.
    """
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(folder), str(out_dir), dtype, str(shard_bytes)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"conversion failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["peak_growth"] = result["peak_rss"] - result["baseline_rss"]
    return result
