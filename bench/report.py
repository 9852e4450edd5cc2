"""What `make bench` writes and prints: one figure (a JSON line of bench/results/<gpu>.jsonl), the GPU's
name for that file, the versions line, and the table of our figures beside transformers' with the
ratio and the bandwidth floor."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Figure:
    date: str
    gpu: str
    model: str
    dtype: str
    system: (
        str  # "ours" | "transformers"; an ablation run names what it turned off: "ours-no-graphs", "ours-no-overlap"
    )
    metric: str
    batch: int
    value: float
    unit: str


def gpu_name(device: torch.device, dry_run: bool) -> str:
    if device.type != "cuda":
        return "cpu-dry-run"
    name = torch.cuda.get_device_name(device) + ("-dry-run" if dry_run else "")
    return re.sub(r"[^A-Za-z0-9.-]+", "-", name).strip("-")


def table(figures: list[Figure]) -> str:
    """ours | transformers (bf16) | ratio | floor, one row per model, dtype, metric and batch."""
    hf = {(f.model, f.metric, f.batch): f.value for f in figures if f.system == "transformers"}
    floors = {(f.model, f.dtype): f.value for f in figures if f.metric == "bandwidth_floor_tokens_per_s"}
    lines = [
        f"{'model':6} {'dtype':5} {'metric':46} {'batch':>5} {'ours':>11} {'transformers':>12} {'ratio':>7} {'floor':>9}"
    ]
    ours = {(f.model, f.metric, f.batch) for f in figures if f.system != "transformers"}
    for f in figures:
        # transformers alone: a run with --ours off, or a batch ours skipped
        if f.system == "transformers" and (f.model, f.metric, f.batch) not in ours:
            lines.append(
                f"{f.model:6} {f.dtype:5} {f.metric:46} {f.batch:>5} {'':>11} {f.value:>12.2f} {'':>7} {'':>9}"
            )
        if f.system == "transformers" or f.metric == "bandwidth_floor_tokens_per_s":
            continue
        other = hf.get((f.model, f.metric, f.batch))
        ratio = f"{f.value / other:6.1f}x" if other else ""
        floor = (
            f"{floors[(f.model, f.dtype)]:9.1f}" if f.metric == "decode_tokens_per_s_per_user" and f.batch == 1 else ""
        )
        metric = (
            f.metric if f.system == "ours" else f"{f.metric} [{f.system[5:]}]"
        )  # an ablation says what it turned off
        lines.append(
            f"{f.model:6} {f.dtype:5} {metric:46} {f.batch:>5} {f.value:>9.2f} {f.unit:<1} "
            f"{(f'{other:.2f}' if other else ''):>12} {ratio:>7} {floor:>9}"
        )
    return "\n".join(lines)


def versions() -> str:
    import transformers

    try:
        import triton

        tri = triton.__version__
    except ImportError:
        tri = "absent"
    cuda = torch.version.cuda or "none"
    return f"torch {torch.__version__}, transformers {transformers.__version__}, triton {tri}, CUDA {cuda}"
