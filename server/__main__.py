"""`python -m server --engine DIR` (or `--backend triton://HOST:PORT`): the OpenAI API under uvicorn."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from server.app import create_app
from server.backend import create_backend
from server.settings import ServerSettings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    p.add_argument("--engine", help="engine directory built by `make engine`")
    p.add_argument("--backend", help="triton://HOST:PORT to translate for a running Triton server instead of the embedded runtime")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--served-model-name", default=None, help="model id clients send (default: the engine's model name)")
    p.add_argument("--model-alias", action="append", default=None, metavar="NAME",
                   help="another model id to answer to (repeatable), e.g. the NIM's names for a demo engine")
    p.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on /v1 (also GEMMA_SERVER_API_KEY)")
    p.add_argument("--max-images-per-prompt", type=int, default=None, help="default: NIM_MAX_IMAGES_PER_PROMPT or 5")
    p.add_argument("--allow-local-image-urls", action="store_true", default=None, help="let image URLs reach loopback/private addresses (tests)")
    p.add_argument("--log-level", default=None)
    return p.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    return ServerSettings.from_env(
        engine_dir=args.engine,
        backend=args.backend,
        host=args.host,
        port=args.port,
        served_model_name=args.served_model_name,
        model_aliases=tuple(args.model_alias) if args.model_alias else None,
        api_key=args.api_key,
        max_images_per_prompt=args.max_images_per_prompt,
        allow_local_image_urls=args.allow_local_image_urls,
        log_level=args.log_level,
    )


def main(argv: list[str] | None = None) -> None:
    settings = settings_from_args(parse_args(argv))
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    backend = create_backend(settings.backend, settings.engine_dir)
    app = create_app(settings, backend)
    model = settings.served_model_name or backend.spec.model_name
    aliases = f" (also answering to {', '.join(settings.model_aliases)})" if settings.model_aliases else ""
    print(f">> serving {model}{aliases} ({settings.engine_dir or settings.backend}) on http://{settings.host}:{settings.port}/v1", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
