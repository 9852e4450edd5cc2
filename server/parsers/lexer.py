"""Split streamed text into plain text and special-token strings, whatever the chunking.

The runtime detokenizes with special tokens kept, and re-chunking may cut a token such as
`<|tool_call>` across two deltas. The lexer holds back only a trailing piece that could still grow
into one of its special tokens, so plain text is never delayed longer than needed.
"""

from __future__ import annotations

from collections.abc import Iterable

# (is_special, text): text is the token string when is_special is True
Event = tuple[bool, str]


class SpecialTokenLexer:
    def __init__(self, specials: Iterable[str]):
        self._specials = tuple(specials)
        assert all(s.startswith("<") for s in self._specials), "the scan looks for '<' only"
        # proper prefixes only: a complete token is matched, never held
        self._prefixes = frozenset(s[:i] for s in self._specials for i in range(1, len(s)))
        self._max_len = max((len(s) for s in self._specials), default=0)
        self._held = ""

    def feed(self, text: str) -> list[Event]:
        buf = self._held + text
        events: list[Event] = []
        start = 0
        pos = buf.find("<") if self._specials else -1
        while pos >= 0:
            token = next((s for s in self._specials if buf.startswith(s, pos)), None)
            if token is not None:
                if pos > start:
                    events.append((False, buf[start:pos]))
                events.append((True, token))
                start = pos + len(token)
                pos = buf.find("<", start)
            elif len(buf) - pos < self._max_len and buf[pos:] in self._prefixes:
                break  # may complete with the next delta
            else:
                pos = buf.find("<", pos + 1)
        stop = pos if pos >= 0 else len(buf)
        if stop > start:
            events.append((False, buf[start:stop]))
        self._held = buf[max(stop, start) :]
        return events

    def flush(self) -> list[Event]:
        held, self._held = self._held, ""
        return [(False, held)] if held else []
