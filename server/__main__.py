"""`python -m server --engine DIR` (or `--backend triton://HOST:PORT`): the OpenAI API under uvicorn."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from gemma_runtime.config import SPECULATIVE_METHODS, RuntimeConfig, default_device
from server.backend import check_backend_choice
from server.cli_errors import OneLineParser, UserError
from server.key_scope import SCOPES
from server.limit_flags import add_limit_args, limit_overrides
from server.parallel_flags import add_parallel_args, check_parallel, parallel_overrides
from server.preflight import (
    check_device,
    check_drafter,
    check_engine_dir,
    check_port_free,
    check_triton_reachable,
)
from server.settings import ServerSettings

if TYPE_CHECKING:
    import uvicorn

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m server", description=__doc__)
    p.add_argument("--engine", help="engine directory built by `make engine`")
    p.add_argument(
        "--backend", help="triton://HOST:PORT to translate for a running Triton server instead of the embedded runtime"
    )
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--served-model-name", default=None, help="model id clients send (default: the engine's model name)")
    p.add_argument(
        "--model-alias",
        action="append",
        default=None,
        metavar="NAME",
        help="another model id to answer to (repeatable), e.g. the NIM's names for a demo engine",
    )
    p.add_argument(
        "--api-key", default=None, help="require `Authorization: Bearer KEY` on /v1 (also GEMMA_SERVER_API_KEY)"
    )
    p.add_argument(
        "--api-key-scope",
        choices=sorted(SCOPES),
        default=None,
        help="what the key guards: api (default: /v1) or all (/metrics and /openapi.json, /docs, /redoc too); "
        "health stays open (also GEMMA_API_KEY_SCOPE)",
    )
    p.add_argument("--max-images-per-prompt", type=int, default=None, help="default: NIM_MAX_IMAGES_PER_PROMPT or 5")
    p.add_argument(
        "--allow-local-image-urls",
        action="store_true",
        default=None,
        help="let image URLs reach loopback/private addresses (tests)",
    )
    p.add_argument("--log-level", default=None)
    rt = p.add_argument_group("runtime (the embedded engine; with --backend, Triton's config.pbtxt sets these)")
    rt.add_argument("--device", default=None, help="cuda or cpu (default: cuda when a GPU is visible)")
    rt.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        default=None,
        help="compute dtype (default: the engine's; FP8 weights stay FP8)",
    )
    rt.add_argument("--max-num-seqs", type=int, default=None, help="sequences decoded together (default 64)")
    rt.add_argument(
        "--max-model-len", type=int, default=None, help="cap on prompt + output tokens (default: the engine's)"
    )
    rt.add_argument(
        "--gpu-memory-utilization", type=float, default=None, help="share of the GPU the engine may fill (default 0.9)"
    )
    rt.add_argument("--enforce-eager", action="store_true", help="run every step eagerly: no CUDA graphs")
    rt.add_argument(
        "--disable-overlap-schedule",
        action="store_true",
        help="read each step's tokens before scheduling the next (overlap is on by default on CUDA)",
    )
    rt.add_argument(
        "--no-prefix-caching",
        action="store_true",
        help="recompute every prompt (prefix caching of shared prompt pages is on by default)",
    )
    rt.add_argument(
        "--speculative",
        choices=list(SPECULATIVE_METHODS),
        default=None,
        help="speculative decoding: mtp (the engine's drafter, `make engine ... ASSISTANT=auto`), ngram (prompt "
        "lookup) or off (default)",
    )
    rt.add_argument(
        "--num-speculative-tokens", type=int, default=None, help="drafts verified per sequence per step (default 3)"
    )
    rt.add_argument(
        "--speculative-max-batch",
        type=int,
        default=None,
        help="a step with more decoding sequences drafts nothing (default 32)",
    )
    rt.add_argument(
        "--engine-process",
        action="store_true",
        help="run the engine loop in a process of its own beside the HTTP server's (default: a thread of it); "
        "the event loop and the engine then never wait for each other's interpreter lock",
    )
    add_parallel_args(p)
    add_limit_args(p)
    return p.parse_args(argv)


def runtime_config_from_args(args: argparse.Namespace) -> RuntimeConfig:
    given = {
        "dtype": args.dtype,
        "max_num_seqs": args.max_num_seqs,
        "max_model_len": args.max_model_len,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "decode_graph_max_batch": 0 if args.enforce_eager else None,
        "prefill_graph_max_tokens": 0 if args.enforce_eager else None,
        "overlap_scheduling": False if args.disable_overlap_schedule else None,
        "enable_prefix_caching": False if args.no_prefix_caching else None,
        "speculative": args.speculative,
        "num_speculative_tokens": args.num_speculative_tokens,
        "speculative_max_batch": args.speculative_max_batch,
    }
    given = {k: v for k, v in given.items() if v is not None} | parallel_overrides(args)
    return RuntimeConfig(device=args.device or default_device(), **given)


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    return ServerSettings.from_env(
        engine_dir=args.engine,
        backend=args.backend,
        host=args.host,
        port=args.port,
        served_model_name=args.served_model_name,
        model_aliases=tuple(args.model_alias) if args.model_alias else None,
        api_key=args.api_key,
        api_key_scope=args.api_key_scope,
        max_images_per_prompt=args.max_images_per_prompt,
        allow_local_image_urls=args.allow_local_image_urls,
        log_level=args.log_level,
        **limit_overrides(args),
    )


def check_settings(settings: ServerSettings, speculative: str | None) -> None:
    """The user's mistakes that need neither torch nor the device, each as one line, at once (a wrong
    folder is told in under a second, before torch and the web stack are imported)."""
    if settings.api_key_scope not in SCOPES:
        raise UserError(f"GEMMA_API_KEY_SCOPE={settings.api_key_scope!r}: use one of {', '.join(sorted(SCOPES))}")
    if settings.log_level.lower() not in LOG_LEVELS:
        raise UserError(f"--log-level {settings.log_level!r}: use one of {', '.join(LOG_LEVELS)}")
    check_backend_choice(settings.backend, settings.engine_dir)
    if settings.engine_dir:
        check_engine_dir(settings.engine_dir)
        if not settings.backend:
            check_drafter(settings.engine_dir, speculative or "off")
    if settings.backend and settings.backend.startswith("triton://"):
        check_triton_reachable(settings.backend)


def check_runtime(settings: ServerSettings, runtime: RuntimeConfig) -> None:
    """The rest, once the runtime's settings (and so the device) are resolved, before the engine loads
    (minutes for a real model)."""
    if not settings.backend and settings.engine_dir:
        check_device(runtime.device)
        check_parallel(
            settings.engine_dir, runtime.device, runtime.tensor_parallel_size, runtime.enable_expert_parallel
        )
    check_port_free(settings.host, settings.port, "PORT=... for make serve, --port for python -m server")


def uvicorn_config(app, settings: ServerSettings) -> uvicorn.Config:
    import uvicorn

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=settings.timeout_keep_alive_s,
    )


def _bad_setting(e: ValueError) -> UserError:
    return UserError(f"bad setting: {e} (see python -m server --help)")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ValueError as e:
        raise _bad_setting(e) from None
    check_settings(settings, args.speculative)
    try:
        runtime = runtime_config_from_args(args)  # without --device this imports torch to look for a GPU
    except ValueError as e:
        raise _bad_setting(e) from None
    check_runtime(settings, runtime)
    # the web stack and the runtime only now: every mistake above is told without them
    from server.app import create_app
    from server.backend import create_backend
    from server.drain import DrainingServer

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    backend = create_backend(settings.backend, settings.engine_dir, runtime, args.engine_process)
    app = create_app(settings, backend)
    model = settings.served_model_name or backend.spec.model_name
    aliases = f" (also answering to {', '.join(settings.model_aliases)})" if settings.model_aliases else ""
    print(
        f">> serving {model}{aliases} ({settings.engine_dir or settings.backend}) on http://{settings.host}:{settings.port}/v1",
        flush=True,
    )
    try:
        DrainingServer(
            uvicorn_config(app, settings), app.state.ctx.admission, settings.drain_timeout_s
        ).run()  # SIGTERM drains first (server/drain.py)
    except KeyboardInterrupt:
        # Ctrl+C: uvicorn has already shut down in order, then re-raised the signal; no traceback for it.
        print(">> stopped", flush=True)


if __name__ == "__main__":
    main()
