"""Request fields the server cannot honour: each check names the field and answers a clear 400.

A registry of checks rather than one long function: a feature that lands (structured output, say)
removes its check here and nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable

from server.errors import APIError, bad_request
from server.responses.protocol import NamedToolChoiceParam, ResponsesRequest


def _background(req: ResponsesRequest) -> APIError | None:
    if req.background:
        return bad_request(
            "background mode is not supported by this server: send the request without `background` "
            "(stream it to see progress)",
            param="background",
            code="unsupported_parameter",
        )
    return None


def _text_format(req: ResponsesRequest) -> APIError | None:
    fmt = req.text.format if req.text is not None else None
    if fmt is not None and fmt.type not in ("text", "json_object", "json_schema"):
        return bad_request(
            f"text.format type {fmt.type!r} is not supported: use 'text', 'json_object' or 'json_schema'",
            param="text.format.type",
            code="unsupported_parameter",
        )
    if fmt is not None and fmt.type == "json_schema" and fmt.schema_ is None:
        return bad_request("text.format json_schema needs `schema`", param="text.format.schema")
    return None


def _tools(req: ResponsesRequest) -> APIError | None:
    for i, tool in enumerate(req.tools or ()):
        if tool.type != "function":
            return bad_request(
                f"tools[{i}]: tool type {tool.type!r} is not supported; only 'function' tools are served",
                param=f"tools.{i}.type",
                code="unsupported_parameter",
            )
        if not tool.name:
            return bad_request(f"tools[{i}]: a function tool needs a `name`", param=f"tools.{i}.name")
    return None


def _tool_choice(req: ResponsesRequest) -> APIError | None:
    choice = req.tool_choice
    if choice is None or choice in ("none", "auto"):
        return None
    if not req.tools:
        return bad_request("tool_choice 'required' or a named function needs `tools`", param="tool_choice")
    if isinstance(choice, NamedToolChoiceParam):
        if choice.type != "function":
            return bad_request(
                f"tool_choice type {choice.type!r} is not supported; use 'none', 'auto', 'required' "
                "or {'type': 'function', 'name': ...}",
                param="tool_choice.type",
                code="unsupported_parameter",
            )
        if choice.name not in {t.name for t in req.tools}:
            return bad_request(
                f"tool_choice names function {choice.name!r}, which is not in `tools`", param="tool_choice.name"
            )
    return None


# Fields whose silent loss would change the answer (a conversation's earlier turns, a stored prompt):
# refused by name, where other unknown fields are accepted and ignored as for chat completions.
_UNSERVED_FIELDS = {
    "conversation": "conversations are not served: chain turns with `previous_response_id`, or send the items in `input`",
    "prompt": "stored prompt templates are not served: send the text in `instructions` and `input`",
}


def _unserved(req: ResponsesRequest) -> APIError | None:
    for field, why in _UNSERVED_FIELDS.items():
        if (req.model_extra or {}).get(field) is not None:
            return bad_request(f"`{field}`: {why}", param=field, code="unsupported_parameter")
    return None


CHECKS: tuple[Callable[[ResponsesRequest], APIError | None], ...] = (
    _background,
    _text_format,
    _tools,
    _tool_choice,
    _unserved,
)


def check_supported(req: ResponsesRequest) -> None:
    for check in CHECKS:
        error = check(req)
        if error is not None:
            raise error
