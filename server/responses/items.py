"""Responses input items -> chat messages (the dicts `server.protocol.ChatMessage` reads).

Each item type has a handler (a registry keyed by `type`); a message without `type` is a message.
Assistant-side items that follow one another (a reasoning item, an assistant message, function calls)
fold into one assistant message, as chat completions carry them; a `function_call_output` becomes a
tool message answering its `call_id`. Images stay URLs: the chat path fetches them with the same
safe fetcher as chat completions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from server.errors import bad_request

SYSTEM_ROLES = ("system", "developer")
_TEXT_PARTS = ("input_text", "output_text", "text", "refusal", "summary_text", "reasoning_text")


def _where(index: int, field: str | None = None) -> str:
    return f"input.{index}" + (f".{field}" if field else "")


def _text_of(part: dict) -> str:
    return part.get("refusal") if part.get("type") == "refusal" else part.get("text")


def _content_parts(content: Any, role: str, index: int) -> str | list[dict]:
    """A message's content: a string stays a string; parts become chat content parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(
            f"input[{index}]: message content must be a string or a list of content parts",
            param=_where(index, "content"),
        )
    parts: list[dict] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        where = _where(index, f"content.{j}")
        if kind in _TEXT_PARTS:
            text = _text_of(part)
            if not isinstance(text, str):
                raise bad_request(f"input[{index}].content[{j}]: a {kind} part needs `text`", param=where)
            parts.append({"type": "text", "text": text})
        elif kind == "input_image":
            if role != "user":
                raise bad_request(f"input[{index}]: images are only allowed in user messages", param=where)
            if part.get("file_id") and not part.get("image_url"):
                raise bad_request(
                    "input_image by `file_id` is not supported (this server has no Files API): give `image_url` "
                    "(an http(s) or data URL)",
                    param=where,
                    code="unsupported_parameter",
                )
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise bad_request(f"input[{index}].content[{j}]: an input_image part needs `image_url`", param=where)
            parts.append({"type": "image_url", "image_url": {"url": url, "detail": part.get("detail")}})
        else:
            raise bad_request(
                f"input[{index}].content[{j}]: content part type {kind!r} is not supported "
                "(use input_text or input_image)",
                param=where,
                code="unsupported_parameter",
            )
    return parts


class _Conversation:
    """Accumulates chat messages; assistant-side items gather in `pending` until something else comes."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.pending: dict | None = None  # the assistant message being gathered
        self.call_ids: set[str] = set()

    def flush(self) -> None:
        if self.pending is not None:
            self.messages.append(self.pending)
            self.pending = None

    def assistant(self) -> dict:
        if self.pending is None:
            self.pending = {"role": "assistant", "content": ""}
        return self.pending

    def message(self, item: dict, index: int) -> None:
        role = item.get("role")
        if role not in ("user", "assistant", *SYSTEM_ROLES):
            raise bad_request(
                f"input[{index}]: message role must be user, assistant, system or developer, not {role!r}",
                param=_where(index, "role"),
            )
        content = _content_parts(item.get("content", ""), role, index)
        if role != "assistant":
            self.flush()
            self.messages.append({"role": role, "content": content})
            return
        if self.pending is not None and (self.pending["content"] or self.pending.get("tool_calls")):
            self.flush()  # a second assistant text is a new message
        text = content if isinstance(content, str) else "".join(p["text"] for p in content)
        self.assistant()["content"] = text

    def function_call(self, item: dict, index: int) -> None:
        call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments", "{}")
        for field, value in (("call_id", call_id), ("name", name), ("arguments", arguments)):
            if not isinstance(value, str) or (field != "arguments" and not value):
                raise bad_request(
                    f"input[{index}]: a function_call item needs a string `{field}`", param=_where(index, field)
                )
        self.call_ids.add(call_id)
        call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        self.assistant().setdefault("tool_calls", []).append(call)

    def function_call_output(self, item: dict, index: int) -> None:
        call_id, output = item.get("call_id"), item.get("output")
        if not isinstance(call_id, str) or not call_id:
            raise bad_request(
                f"input[{index}]: a function_call_output item needs `call_id`", param=_where(index, "call_id")
            )
        if call_id not in self.call_ids:
            raise bad_request(
                f"input[{index}]: function_call_output answers call_id {call_id!r}, but no function_call "
                "item with that call_id comes before it",
                param=_where(index, "call_id"),
            )
        if isinstance(output, list):
            parts = _content_parts(output, "tool", index)
            output = "".join(p["text"] for p in parts)
        if not isinstance(output, str):
            raise bad_request(
                f"input[{index}]: function_call_output `output` must be a string", param=_where(index, "output")
            )
        self.flush()
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": output})

    def reasoning(self, item: dict, index: int) -> None:
        texts = [p.get("text", "") for p in item.get("content") or () if isinstance(p, dict)]
        if not texts:  # no reasoning text kept: its summary is the next best record of it
            texts = [p.get("text", "") for p in item.get("summary") or () if isinstance(p, dict)]
        if self.pending is not None:
            self.flush()  # reasoning opens a new assistant turn
        self.assistant()["reasoning"] = "".join(texts)


ITEM_HANDLERS: dict[str, Callable[[_Conversation, dict, int], None]] = {
    "message": _Conversation.message,
    "function_call": _Conversation.function_call,
    "function_call_output": _Conversation.function_call_output,
    "reasoning": _Conversation.reasoning,
}


def normalize_input(value: str | list[dict]) -> list[dict]:
    """`input` as a list of items (a string is one user message)."""
    return [{"type": "message", "role": "user", "content": value}] if isinstance(value, str) else list(value)


def to_chat_messages(items: list[dict], instructions: str | None, first_index: int = 0) -> list[dict]:
    """`first_index`: the position the first item has in the request's own `input` (negative for items
    that came from previous_response_id), so errors point at the client's item."""
    conversation = _Conversation()
    for i, item in enumerate(items):
        index = i + first_index
        if not isinstance(item, dict):
            raise bad_request(f"input[{index}] must be an object", param=_where(index))
        kind = item.get("type", "message")
        handler = ITEM_HANDLERS.get(kind)
        if handler is None:
            raise bad_request(
                f"input[{index}]: item type {kind!r} is not supported (served: {', '.join(ITEM_HANDLERS)})",
                param=_where(index, "type"),
                code="unsupported_parameter",
            )
        handler(conversation, item, index)
    conversation.flush()
    messages = conversation.messages
    if instructions:
        messages = _with_instructions(messages, instructions)
    if not messages:
        raise bad_request("input must hold at least one item", param="input")
    return messages


def _with_instructions(messages: list[dict], instructions: str) -> list[dict]:
    """`instructions` is the system message; a system message the input starts with follows it in the same one
    (Gemma 4's template takes one system turn)."""
    if messages and messages[0]["role"] in SYSTEM_ROLES:
        first = messages[0]["content"]
        text = first if isinstance(first, str) else "".join(p.get("text", "") for p in first)
        return [{"role": "system", "content": f"{instructions}\n\n{text}"}, *messages[1:]]
    return [{"role": "system", "content": instructions}, *messages]
