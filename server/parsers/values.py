"""The Gemma 4 value grammar (tool-call arguments) <-> Python objects.

Syntax (gemma4.md §4.2): objects `{key:value,...}` with bare keys, arrays `[a,b]`, strings wrapped in the
one-token delimiter `<|"|>` (no escapes inside: the delimiter cannot occur in a string), bare numbers,
`true`/`false`, and `null`/`none`/`nil` (the template renders Python's None as `None`).
The reader is lenient where the model is known to drift (whitespace between tokens, a trailing comma,
JSON-quoted strings or keys, a bare unquoted word as a string value) and strict elsewhere: anything
else raises ValueSyntaxError so the caller can fall back to plain text.
"""

from __future__ import annotations

import json
import math
import re

STRING_DELIM = '<|"|>'

_KEYWORDS = {"true": True, "false": False, "null": None, "none": None, "nil": None}
_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?")
# A bare key or bare scalar ends at a structural character; `<` is allowed so `a<b` stays a word,
# the string delimiter is checked separately.
_KEY_STOP = frozenset(':{}[],"')
_SCALAR_STOP = frozenset(",{}[]:")
_JSON_DECODER = json.JSONDecoder()


class ValueSyntaxError(ValueError):
    pass


class _Reader:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def fail(self, what: str) -> ValueSyntaxError:
        return ValueSyntaxError(f"{what} at offset {self.pos}: {self.text[self.pos : self.pos + 20]!r}")

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, ch: str) -> None:
        self.skip_ws()
        if self.peek() != ch:
            raise self.fail(f"expected {ch!r}")
        self.pos += 1

    def value(self) -> object:
        self.skip_ws()
        ch = self.peek()
        if ch == "{":
            return self.obj()
        if ch == "[":
            return self.array()
        if self.text.startswith(STRING_DELIM, self.pos):
            return self.delimited_string()
        if ch == '"':
            return self.json_string()
        return self.scalar()

    def obj(self) -> dict:
        self.expect("{")
        out: dict = {}
        self.skip_ws()
        if self.peek() == "}":
            self.pos += 1
            return out
        while True:
            key = self.key()
            self.expect(":")
            out[key] = self.value()
            self.skip_ws()
            ch = self.peek()
            self.pos += 1
            if ch == "}":
                return out
            if ch != ",":
                self.pos -= 1
                raise self.fail("expected ',' or '}'")
            self.skip_ws()
            if self.peek() == "}":  # trailing comma
                self.pos += 1
                return out

    def array(self) -> list:
        self.expect("[")
        out: list = []
        self.skip_ws()
        if self.peek() == "]":
            self.pos += 1
            return out
        while True:
            out.append(self.value())
            self.skip_ws()
            ch = self.peek()
            self.pos += 1
            if ch == "]":
                return out
            if ch != ",":
                self.pos -= 1
                raise self.fail("expected ',' or ']'")
            self.skip_ws()
            if self.peek() == "]":
                self.pos += 1
                return out

    def key(self) -> str:
        self.skip_ws()
        if self.text.startswith(STRING_DELIM, self.pos):
            return self.delimited_string()
        if self.peek() == '"':
            return self.json_string()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in _KEY_STOP:
            if self.text.startswith(STRING_DELIM, self.pos):
                raise self.fail("string delimiter inside a bare key")
            self.pos += 1
        key = self.text[start : self.pos].strip()
        if not key:
            raise self.fail("empty key")
        return key

    def delimited_string(self) -> str:
        start = self.pos + len(STRING_DELIM)
        end = self.text.find(STRING_DELIM, start)
        if end < 0:
            raise self.fail("unterminated string")
        self.pos = end + len(STRING_DELIM)
        return self.text[start:end]

    def json_string(self) -> str:
        try:
            value, self.pos = _JSON_DECODER.raw_decode(self.text, self.pos)
        except json.JSONDecodeError as exc:
            raise self.fail("bad JSON string") from exc
        return value

    def scalar(self) -> object:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in _SCALAR_STOP:
            if self.text.startswith(STRING_DELIM, self.pos):
                raise self.fail("string delimiter inside a bare value")
            self.pos += 1
        word = self.text[start : self.pos].strip()
        if not word:
            raise self.fail("missing value")
        if self.peek() in ("{", "[", ":"):  # `a:1 b:2` is a missing comma, not the word "1 b:2"
            raise self.fail("bracket or colon inside a bare value")
        if word.lower() in _KEYWORDS:
            return _KEYWORDS[word.lower()]
        m = _NUMBER.fullmatch(word)
        if m is None:
            return word  # a bare word: the model dropped the delimiters
        if m.group(1) is None and m.group(2) is None:
            return int(word)
        number = float(word)
        # inf/nan are not JSON; keep the literal rather than emit invalid arguments
        return number if math.isfinite(number) else word


def parse_value(text: str) -> object:
    """Parse one complete Gemma 4 value (surrounding whitespace allowed)."""
    reader = _Reader(text)
    try:
        value = reader.value()
    except RecursionError as exc:  # absurd nesting from a runaway generation
        raise ValueSyntaxError("nesting too deep") from exc
    reader.skip_ws()
    if reader.pos != len(text):
        raise reader.fail("trailing text")
    return value


def to_gemma4_value(obj: object) -> str:
    """Python -> Gemma 4 value syntax, the way the chat template renders arguments."""
    if isinstance(obj, dict):
        return "{" + ",".join(f"{k}:{to_gemma4_value(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(to_gemma4_value(v) for v in obj) + "]"
    if isinstance(obj, str):
        if STRING_DELIM in obj:
            raise ValueError("a Gemma 4 string cannot contain the string delimiter")
        return STRING_DELIM + obj + STRING_DELIM
    if obj is None:
        return "null"
    if isinstance(obj, bool):  # before int: bool is an int subclass
        return "true" if obj else "false"
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"{obj} has no Gemma 4 (or JSON) form")
        return repr(obj)
    raise TypeError(f"cannot render {type(obj).__name__} as a Gemma 4 value")
