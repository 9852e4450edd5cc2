"""Incremental detokenization and stop strings: token ids in, text deltas out.

Decoding each new token alone breaks multi-byte characters and tokenizers that merge spaces, so we
decode a small window [prefix_offset:] and emit what grew past the window's earlier text, holding back
an incomplete UTF-8 sequence (decoded as U+FFFD) until the next token completes it.
"""

from __future__ import annotations

_CONTEXT_TOKENS = 6  # prompt tokens used as left context for the first output tokens


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids: list[int], skip_special_tokens: bool):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(
            ids, skip_special_tokens=self.skip_special_tokens, clean_up_tokenization_spaces=False
        )

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return new_text[len(prefix_text) :]


class TextStream:
    """The output text of one request, cut at the first stop string, released as deltas.

    Text that could still turn into a stop string is held back until it can't.
    """

    def __init__(self, stop: tuple[str, ...], include_stop_str: bool):
        self.stop = tuple(s for s in stop if s)
        self.include_stop_str = include_stop_str
        self.text = ""
        self.emitted = 0

    def append(self, delta: str) -> str | None:
        """Adds decoded text; returns the stop string if one now appears (the text is cut there)."""
        if not delta:
            return None
        search_from = max(0, len(self.text) - max((len(s) for s in self.stop), default=0))
        self.text += delta
        hit: tuple[int, str] | None = None
        for s in self.stop:
            idx = self.text.find(s, search_from)
            if idx != -1 and (hit is None or idx < hit[0]):
                hit = (idx, s)
        if hit is None:
            return None
        idx, s = hit
        self.text = self.text[: idx + (len(s) if self.include_stop_str else 0)]
        return s

    def take_delta(self, final: bool) -> str:
        end = len(self.text)
        if not final:
            end -= self._partial_stop_suffix()
        end = max(end, self.emitted)
        delta = self.text[self.emitted : end]
        self.emitted = end
        return delta

    def _partial_stop_suffix(self) -> int:
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:n]):
                    longest = n
                    break
        return longest
