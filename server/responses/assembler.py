"""Parsed model output -> Responses output items and the typed stream events that build them.

One assembler serves both paths: the streaming handler sends its events, the non-streaming handler
keeps only the final response, so the two agree by construction. Events follow the OpenAI stream:
`response.created`, `response.in_progress`; per item `response.output_item.added`, its content part
(`response.content_part.added`), deltas (`response.output_text.delta`, `response.reasoning_text.delta`,
`response.function_call_arguments.delta`), their `.done`, `response.output_item.done`; then
`response.completed`, `response.incomplete` or `response.failed` carrying the whole response. Every
event has the next `sequence_number`.

Items open in the order the model writes them: a reasoning item (Gemma 4's thought channel), a message
with one `output_text` part, function calls (each complete when the parser commits it).
"""

from __future__ import annotations

import copy
import secrets
import time

from server.parsers.output_parser import ParsedDelta, ToolCallDelta


def item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def _part(kind: str) -> dict:
    # The output_text part carries annotations/logprobs lists as OpenAI's does; reasoning_text only text.
    return (
        {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        if kind == "message"
        else {"type": "reasoning_text", "text": ""}
    )


class _OpenItem:
    """The item currently receiving text: a message or a reasoning item (function calls never stay open)."""

    def __init__(self, kind: str, output_index: int) -> None:
        self.kind = kind
        self.output_index = output_index
        self.item = (
            {"id": item_id("msg"), "type": "message", "role": "assistant", "status": "in_progress", "content": []}
            if kind == "message"
            else {"id": item_id("rs"), "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}
        )
        self.part = _part(kind)

    @property
    def delta_type(self) -> str:
        return "response.output_text" if self.kind == "message" else "response.reasoning_text"


class ResponseAssembler:
    def __init__(self, response: dict) -> None:
        """`response`: the response object as `response.created` shows it (status in_progress, no output)."""
        self.response = response
        self._seq = 0
        self._open: _OpenItem | None = None

    @property
    def output(self) -> list[dict]:
        return self.response["output"]

    def _event(self, kind: str, **fields) -> dict:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def _snapshot(self, kind: str) -> dict:
        return self._event(kind, response=copy.deepcopy(self.response))

    def start(self) -> list[dict]:
        return [self._snapshot("response.created"), self._snapshot("response.in_progress")]

    # items -----------------------------------------------------------------------------------------
    def _open_item(self, kind: str) -> list[dict]:
        if self._open is not None and self._open.kind == kind:
            return []
        events = self._close_open("completed")
        self._open = item = _OpenItem(kind, len(self.output))
        self.output.append(item.item)
        events.append(
            self._event("response.output_item.added", output_index=item.output_index, item=copy.deepcopy(item.item))
        )
        events.append(
            self._event(
                "response.content_part.added",
                item_id=item.item["id"],
                output_index=item.output_index,
                content_index=0,
                part=copy.deepcopy(item.part),
            )
        )
        return events

    def _text(self, kind: str, text: str) -> list[dict]:
        if not text:
            return []
        events = self._open_item(kind)
        item = self._open
        item.part["text"] += text
        extra = {"logprobs": []} if kind == "message" else {}
        events.append(
            self._event(
                f"{item.delta_type}.delta",
                item_id=item.item["id"],
                output_index=item.output_index,
                content_index=0,
                delta=text,
                **extra,
            )
        )
        return events

    def _close_open(self, status: str) -> list[dict]:
        item, self._open = self._open, None
        if item is None:
            return []
        ids = {"item_id": item.item["id"], "output_index": item.output_index, "content_index": 0}
        extra = {"logprobs": []} if item.kind == "message" else {}
        item.item["content"].append(item.part)
        item.item["status"] = status
        return [
            self._event(f"{item.delta_type}.done", **ids, text=item.part["text"], **extra),
            self._event("response.content_part.done", **ids, part=copy.deepcopy(item.part)),
            self._event("response.output_item.done", output_index=item.output_index, item=copy.deepcopy(item.item)),
        ]

    def _call(self, call: ToolCallDelta) -> list[dict]:
        """A committed call arrives whole (the parser's contract): added, one arguments delta, done."""
        events = self._close_open("completed")
        index = len(self.output)
        item = {
            "id": item_id("fc"),
            "type": "function_call",
            "call_id": call.id,
            "name": call.name,
            "arguments": "",
            "status": "in_progress",
        }
        self.output.append(item)
        events.append(self._event("response.output_item.added", output_index=index, item=copy.deepcopy(item)))
        ids = {"item_id": item["id"], "output_index": index}
        if call.arguments:
            events.append(self._event("response.function_call_arguments.delta", **ids, delta=call.arguments))
        item.update(arguments=call.arguments, status="completed")
        events.append(
            self._event("response.function_call_arguments.done", **ids, name=call.name, arguments=call.arguments)
        )
        events.append(self._event("response.output_item.done", output_index=index, item=copy.deepcopy(item)))
        return events

    def feed(self, delta: ParsedDelta) -> list[dict]:
        # Within one delta the parser's order is reasoning, then content, then the calls it committed.
        events = self._text("reasoning", delta.reasoning) + self._text("message", delta.content)
        for call in delta.tool_calls:
            events += self._call(call)
        return events

    # the end ---------------------------------------------------------------------------------------
    def finish(self, *, incomplete_reason: str | None, usage: dict) -> list[dict]:
        status = "incomplete" if incomplete_reason else "completed"
        events = self._close_open(status)
        if not self.output:  # nothing written at all: still one (empty) message, so output_text exists
            events += self._open_item("message") + self._close_open(status)
        self.response.update(
            status=status,
            incomplete_details={"reason": incomplete_reason} if incomplete_reason else None,
            usage=usage,
            completed_at=int(time.time()) if status == "completed" else None,
        )
        return events + [self._snapshot(f"response.{status}")]

    def fail(self, code: str, message: str) -> list[dict]:
        events = self._close_open("incomplete")
        self.response.update(status="failed", error={"code": code, "message": message})
        return events + [self._snapshot("response.failed")]
