"""One Gemma 4 tool call: `<|tool_call>call:NAME{key:value,...}<tool_call|>` -> (name, JSON arguments)."""

from __future__ import annotations

import json
import re
import secrets
import string

from server.parsers.values import ValueSyntaxError, parse_value

TOOL_CALL_OPEN = "<|tool_call>"
TOOL_CALL_CLOSE = "<tool_call|>"

# `call:` is what the model is trained on; some outputs drop it (`<|tool_call>name{...}`), which
# vLLM's unified parser also accepts. Names keep vLLM's alphabet (word chars, '-', '.').
_HEADER = re.compile(r"\s*(?:call\s*:)?\s*([\w\-.]+)\s*(?=\{)")
_ID_ALPHABET = string.ascii_letters + string.digits


def new_call_id() -> str:
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def arguments_json(args: dict) -> str:
    """The one serialization used everywhere, so streamed and non-streamed arguments agree."""
    return json.dumps(args, ensure_ascii=False)


def parse_tool_call(body: str) -> tuple[str, str] | None:
    """`body` is the text between the call tokens. Returns (name, arguments JSON), or None if malformed."""
    header = _HEADER.match(body)
    if header is None:
        return None
    try:
        args = parse_value(body[header.end():])
    except ValueSyntaxError:
        return None
    if not isinstance(args, dict):
        return None
    return header.group(1), arguments_json(args)
