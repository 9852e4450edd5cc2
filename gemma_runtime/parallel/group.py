"""The process group every rank joins: NCCL on GPUs, gloo on CPU, rendezvous over TCP on loopback (one
machine; docs/scale_out.md says what several would need), and a timeout on every collective so that a
rank that stops answering fails the step instead of hanging it."""

from __future__ import annotations

import socket
from dataclasses import replace
from datetime import timedelta

import torch
import torch.distributed as dist

from gemma_runtime.config import ResolvedConfig

RENDEZVOUS_HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((RENDEZVOUS_HOST, 0))
        return s.getsockname()[1]


def rank_device(device: str, rank: int) -> torch.device:
    """Rank r's device: cuda:r on GPUs (one GPU a rank), the CPU otherwise."""
    return torch.device("cuda", rank) if torch.device(device).type == "cuda" else torch.device("cpu")


def init_group(rank: int, world: int, port: int, device: torch.device, timeout_s: float) -> None:
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        init_method=f"tcp://{RENDEZVOUS_HOST}:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=timeout_s),
    )


def close_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def agree_on_pages(config: ResolvedConfig) -> ResolvedConfig:
    """Every rank sizes its KV pools from its own free memory and shard; the smallest wins, so that one
    scheduler's page numbers are valid on every rank (a collective: all ranks call it once at startup)."""
    pages = torch.tensor([config.num_full_blocks, config.num_sliding_blocks], dtype=torch.int64, device=config.device)
    dist.all_reduce(pages, op=dist.ReduceOp.MIN)
    full, sliding = pages.tolist()
    return replace(config, num_full_blocks=full, num_sliding_blocks=sliding)
