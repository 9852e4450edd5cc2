"""The tensor-parallel flags (`--tensor-parallel-size N`, `--enable-expert-parallel`) of `python -m server`
and `make serve SERVER_ARGS=...`, their RuntimeConfig fields, and their one-line preflight errors (a
size the engine's heads or experts do not divide, more ranks than GPUs) before anything loads."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from server.cli_errors import UserError


def add_parallel_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("parallelism (one engine across several GPUs: docs/parallelism.md)")
    g.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=None,
        help="ranks the engine is split across (NCCL on GPUs, one GPU each; gloo on CPU); default 1",
    )
    g.add_argument(
        "--enable-expert-parallel",
        action="store_true",
        help="split a MoE's experts across the ranks (default: split each expert's intermediate)",
    )


def parallel_overrides(args: argparse.Namespace) -> dict:
    """RuntimeConfig fields the flags set (only those given)."""
    given = {"tensor_parallel_size": args.tensor_parallel_size}
    if args.enable_expert_parallel:
        given["enable_expert_parallel"] = True
    return {k: v for k, v in given.items() if v is not None}


def check_parallel(engine_dir: str | None, device: str, tensor_parallel_size: int, expert_parallel: bool) -> None:
    if tensor_parallel_size < 1:
        raise UserError(f"--tensor-parallel-size {tensor_parallel_size}: use 1 or more")
    if tensor_parallel_size == 1:
        return
    if device.startswith("cuda"):
        import torch

        if torch.cuda.device_count() < tensor_parallel_size:
            raise UserError(
                f"--tensor-parallel-size {tensor_parallel_size}: only {torch.cuda.device_count()} GPU(s) visible "
                "(one rank a GPU; CUDA_VISIBLE_DEVICES chooses them)"
            )
    if engine_dir:
        from gemma_runtime.engine_format.files import ENGINE_JSON
        from gemma_runtime.engine_format.spec import TextSpec
        from gemma_runtime.parallel.plan import ShardPlan

        text = TextSpec.from_dict(json.loads((Path(engine_dir) / ENGINE_JSON).read_text())["text"])
        try:
            ShardPlan(tensor_parallel_size, 0, expert_parallel).check(text)
        except ValueError as e:
            raise UserError(f"{e}: choose a size that divides it") from None
