"""Gemma 4 output -> reasoning, content and tool calls, streaming and non-streaming.

One state machine serves both paths: `parse_output` is `feed(text)` + `finish()`, and the streaming
path is chunk-independent (the lexer and the label check only decide on text they have fully seen),
so the two agree by construction and the tests check it for every two-way split.

A tool call is committed only at its `<tool_call|>`: until then it may still turn out malformed or
unterminated, and such a call must come back as plain content in both paths. So a call's id, name
and complete arguments arrive in one delta; no fragment is ever emitted that could need retracting.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from server.parsers.lexer import SpecialTokenLexer
from server.parsers.reasoning import CHANNEL_CLOSE, CHANNEL_OPEN, label_undecided, strip_label
from server.parsers.tool_calls import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, new_call_id, parse_tool_call

# The runtime normally removes these; a trailing one (or one from a client-side stop) is dropped.
STOP_TOKENS = ("<turn|>", "<|tool_response>", "<eos>")


@dataclass(frozen=True)
class ToolCallDelta:
    index: int
    id: str | None  # id and name only on the first delta of a call
    name: str | None
    arguments: str


@dataclass(frozen=True)
class ParsedDelta:
    reasoning: str = ""
    content: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.tool_calls)


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object string


@dataclass(frozen=True)
class ParsedMessage:
    reasoning: str | None  # None when empty (an empty thought channel counts as none)
    content: str | None  # None when empty
    tool_calls: tuple[ToolCall, ...]

    @classmethod
    def from_deltas(cls, deltas: Iterable[ParsedDelta]) -> ParsedMessage:
        """Merge streamed deltas the way an OpenAI client accumulates them."""
        reasoning, content = [], []
        calls: dict[int, list] = {}  # index -> [id, name, argument fragments]
        for delta in deltas:
            reasoning.append(delta.reasoning)
            content.append(delta.content)
            for d in delta.tool_calls:
                call = calls.setdefault(d.index, [None, None, []])
                call[0] = call[0] if d.id is None else d.id
                call[1] = call[1] if d.name is None else d.name
                call[2].append(d.arguments)
        tool_calls = tuple(ToolCall(i, n, "".join(a)) for _, (i, n, a) in sorted(calls.items()))
        return cls("".join(reasoning) or None, "".join(content) or None, tool_calls)


class _State(enum.Enum):
    CONTENT = "content"
    LABEL = "label"  # just after <|channel>, deciding whether the text is the `thought` label
    REASONING = "reasoning"
    CALL = "call"  # inside <|tool_call> ... waiting for <tool_call|>


class Gemma4OutputParser:
    def __init__(
        self,
        *,
        parse_reasoning: bool = True,
        parse_tool_calls: bool = True,
        starts_in_reasoning: bool = False,
        id_factory: Callable[[], str] | None = None,
    ):
        specials = list(STOP_TOKENS)
        # only tokens that change the parse are special: others pass through as text, unheld
        if parse_reasoning:
            specials += [CHANNEL_OPEN, CHANNEL_CLOSE]
        if parse_tool_calls:
            specials += [TOOL_CALL_OPEN, TOOL_CALL_CLOSE]
        self._lexer = SpecialTokenLexer(specials)
        self._new_id = id_factory or new_call_id
        self._state = _State.REASONING if starts_in_reasoning and parse_reasoning else _State.CONTENT
        self._pending = ""  # LABEL: text after <|channel>; CALL: raw call text from <|tool_call>
        self._num_calls = 0
        self._finished = False
        self._reasoning: list[str] = []
        self._content: list[str] = []
        self._calls: list[ToolCallDelta] = []
        self._on_special = {
            CHANNEL_OPEN: self._channel_open,
            CHANNEL_CLOSE: self._channel_close,
            TOOL_CALL_OPEN: self._call_open,
            TOOL_CALL_CLOSE: self._call_close,
            **{tok: self._stop_token for tok in STOP_TOKENS},
        }
        self._on_text = {
            _State.CONTENT: self._content.append,
            _State.REASONING: self._reasoning.append,
            _State.LABEL: self._label_text,
            _State.CALL: self._call_text,
        }

    @property
    def saw_tool_calls(self) -> bool:
        return self._num_calls > 0

    def feed(self, delta: str) -> ParsedDelta:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        for is_special, text in self._lexer.feed(delta):
            if is_special:
                self._on_special[text]()
            else:
                self._on_text[self._state](text)
        return self._take()

    def finish(self) -> ParsedDelta:
        if self._finished:
            return ParsedDelta()
        for _, text in self._lexer.flush():  # held text is a token prefix, never a token
            self._on_text[self._state](text)
        self._settle_label()
        if self._state is _State.CALL:  # unterminated: the call text was just text
            self._abandon_call()
        self._finished = True
        return self._take()

    # text handlers ------------------------------------------------------------------------------
    def _label_text(self, text: str) -> None:
        self._pending += text
        if not label_undecided(self._pending):
            self._settle_label()

    def _call_text(self, text: str) -> None:
        self._pending += text

    # special-token handlers ---------------------------------------------------------------------
    def _channel_open(self) -> None:
        if self._state is _State.CALL:
            self._pending += CHANNEL_OPEN
            return
        self._settle_label()
        # a repeated <|channel> inside reasoning is swallowed along with its label
        self._state = _State.LABEL

    def _channel_close(self) -> None:
        if self._state is _State.CALL:
            self._pending += CHANNEL_CLOSE
            return
        self._settle_label()
        self._state = _State.CONTENT  # a stray <channel|> in content is swallowed

    def _call_open(self) -> None:
        self._settle_label()
        if self._state is _State.CALL:  # a new call before the old one closed: the old was text
            self._abandon_call()
        # from reasoning this is the implicit end of the thought channel
        self._state = _State.CALL
        self._pending = TOOL_CALL_OPEN

    def _call_close(self) -> None:
        if self._state is not _State.CALL:
            self._settle_label()
            return  # a stray close tag carries no text worth showing
        parsed = parse_tool_call(self._pending[len(TOOL_CALL_OPEN) :])
        if parsed is None:
            self._pending += TOOL_CALL_CLOSE
            self._abandon_call()
            return
        name, arguments = parsed
        self._calls.append(ToolCallDelta(self._num_calls, self._new_id(), name, arguments))
        self._num_calls += 1
        self._pending = ""
        self._state = _State.CONTENT

    def _stop_token(self) -> None:
        pass  # dropped wherever it appears

    # helpers ------------------------------------------------------------------------------------
    def _settle_label(self) -> None:
        if self._state is _State.LABEL:
            self._reasoning.append(strip_label(self._pending))
            self._pending = ""
            self._state = _State.REASONING

    def _abandon_call(self) -> None:
        self._content.append(self._pending)
        self._pending = ""
        self._state = _State.CONTENT

    def _take(self) -> ParsedDelta:
        delta = ParsedDelta("".join(self._reasoning), "".join(self._content), tuple(self._calls))
        self._reasoning.clear()
        self._content.clear()
        self._calls.clear()
        return delta


def parse_output(text: str, **options) -> ParsedMessage:
    """Non-streaming parse: exactly what streaming the same text in any chunks accumulates to."""
    parser = Gemma4OutputParser(**options)
    return ParsedMessage.from_deltas([parser.feed(text), parser.finish()])
