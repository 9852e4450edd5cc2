"""One Gemma 4 tool call: `<|tool_call>call:NAME{key:value,...}<tool_call|>` -> (name, JSON arguments).

Real checkpoints also emit `<|tool_call>:NAME{...}` (a bare colon), `<|tool_call>NAME{...}` (no `call:`)
and `call:NAME(key:value,...)` (parenthesised arguments); inside the call tokens these can only be
calls, so all of them parse. Anything else stays text (the caller keeps it as content).
"""

from __future__ import annotations

import json
import re
import secrets
import string

from server.parsers.values import ValueSyntaxError, parse_value

TOOL_CALL_OPEN = "<|tool_call>"
TOOL_CALL_CLOSE = "<tool_call|>"

# `call:` is what the model is trained on; some outputs drop `call` or all of `call:`, which vLLM's
# unified parser also accepts. Names keep vLLM's alphabet (word chars, '-', '.').
_HEADER = re.compile(r"\s*(?:call\s*:|:)?\s*([\w\-.]+)\s*(?=[{(])")
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
    args_text = body[header.end() :]
    if args_text.startswith("("):
        # `name(k:v,...)`: the same members as `{k:v,...}`; the value reader checks what is inside
        inner = args_text.rstrip()
        if not inner.endswith(")"):
            return None
        args_text = "{" + inner[1:-1] + "}"
    try:
        args = parse_value(args_text)
    except ValueSyntaxError:
        return None
    if not isinstance(args, dict):
        return None
    return header.group(1), arguments_json(args)
