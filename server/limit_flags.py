"""The command-line flags of the overload limits (docs/operations.md), one table for
`python -m server`, `make serve SERVER_ARGS=...` and the Triton model's config.pbtxt parameters."""

from __future__ import annotations

import argparse

from server.settings import ServerSettings

_D = ServerSettings()

# flag -> (ServerSettings field, type, help). The names are a contract: keep them.
LIMIT_FLAGS: dict[str, tuple[str, type, str]] = {
    "--max-queued-requests": (
        "max_queued_requests",
        int,
        f"generation requests admitted beyond the engine's batch; more get 503 + Retry-After (default {_D.max_queued_requests})",
    ),
    "--drain-timeout": (
        "drain_timeout_s",
        float,
        f"on SIGTERM, seconds in-flight requests may finish (default {_D.drain_timeout_s:g})",
    ),
    "--request-timeout": (
        "request_timeout_s",
        float,
        "end a request still running after this many seconds (default: none)",
    ),
    "--timeout-keep-alive": (
        "timeout_keep_alive_s",
        int,
        f"seconds an idle keep-alive connection stays open; keep it above your clients' and load balancer's "
        f"idle timeouts (default {_D.timeout_keep_alive_s})",
    ),
    "--max-request-bytes": (
        "max_request_bytes",
        int,
        "request body cap (default: sized from max_model_len and the image limits)",
    ),
    "--max-stop-strings": ("max_stop_strings", int, f"stop strings per request (default {_D.max_stop_strings})"),
    "--max-stop-string-length": (
        "max_stop_string_chars",
        int,
        f"characters per stop string (default {_D.max_stop_string_chars})",
    ),
    "--max-sequences-per-request": (
        "max_sequences_per_request",
        int,
        f"prompts x n per request (default {_D.max_sequences_per_request})",
    ),
    "--max-tools": ("max_tools", int, f"tools per request (default {_D.max_tools})"),
    "--max-tools-bytes": ("max_tools_bytes", int, f"the tools' JSON size per request (default {_D.max_tools_bytes})"),
    "--max-logprobs": ("max_logprobs", int, f"logprobs / top_logprobs per token (default {_D.max_logprobs})"),
}
TRUST_FLAG = "--trust-request-chat-template"


def add_limit_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("limits (docs/operations.md)")
    for flag, (field, kind, help_text) in LIMIT_FLAGS.items():
        group.add_argument(flag, dest=field, type=kind, default=None, help=help_text)
    group.add_argument(
        TRUST_FLAG,
        dest="trust_request_chat_template",
        action="store_true",
        default=None,
        help="let chat_template_kwargs set any key, a whole template included (trusted clients only)",
    )


def limit_overrides(args: argparse.Namespace) -> dict:
    """The ServerSettings fields the limit flags gave (None: not given)."""
    fields = [field for field, _, _ in LIMIT_FLAGS.values()] + ["trust_request_chat_template"]
    return {f: getattr(args, f, None) for f in fields}
