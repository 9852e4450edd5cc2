"""`make bench`'s flags checked before the run (the models as the run reaches each): every mistake is one
line naming the fix (server/cli_errors.py), not a KeyError deep in a run that took minutes to reach it."""

from __future__ import annotations

from server.cli_errors import UserError

DTYPES = ("bf16", "fp8")
SWITCH = {"auto": None, "on": True, "off": False}  # --decode-graphs / --overlap: None leaves it to the runtime


def check_model(name: str, models: dict) -> None:
    """`models`: bench/random_engine.py's MODELS."""
    if name not in models:
        raise UserError(f"--models: unknown {name!r}; use a comma-separated list of {', '.join(models)}")


def _listed(value: str | None, known, flag: str) -> None:
    for name in value.split(",") if value else ():
        if name not in known:
            raise UserError(f"{flag} {value!r}: unknown {name!r}; use a comma-separated list of {', '.join(known)}")


def _cuda_available() -> bool:
    import torch  # only when asked: a dry run's flag mistakes are told without importing torch

    return torch.cuda.is_available()


def check_bench_args(args, cuda_available: bool | None = None) -> None:
    """`args` from bench/run.py's parser; `cuda_available` None: ask torch (only for a run on the GPU).
    The models are checked one by one as the run reaches them (check_model): the figures of the models
    before a misspelt one are measured and kept."""
    if not args.dry_run and not (_cuda_available() if cuda_available is None else cuda_available):
        raise UserError(
            "no CUDA GPU is visible: make bench measures a GPU; on this machine run "
            "make bench BENCH_ARGS=--dry-run (the tiny engine on CPU: checks the script, not speed)"
        )
    _listed(args.dtypes, DTYPES, "--dtypes")
    tp = getattr(args, "tensor_parallel_size", 1)
    if tp < 1:
        raise UserError(f"--tensor-parallel-size {tp}: use 1 or more")
    if tp > 1 and not args.dry_run:
        import torch

        if torch.cuda.device_count() < tp:
            raise UserError(
                f"--tensor-parallel-size {tp}: only {torch.cuda.device_count()} GPU(s) visible (one rank a GPU); "
                "the CPU figures of make bench BENCH_ARGS='--dry-run --tensor-parallel-size 2' check correctness only"
            )
    if args.ours == "off" and args.transformers == "off":
        raise UserError("--ours off --transformers off measures nothing: leave one of them on")
