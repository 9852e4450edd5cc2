"""`usage.output_tokens_details.reasoning_tokens`: the generated tokens inside Gemma 4's thought channel.

Counted on token ids, not re-tokenized text: the markers `<|channel>` and `<channel|>` are single
tokens, so a token belongs to the reasoning from the open marker through the close marker (both
counted, as they are generated for the reasoning); a `<|tool_call>` ends it too, as it does for the
output parser. A prompt that leaves the channel open starts inside.
"""

from __future__ import annotations

from collections.abc import Iterable

from server.parsers.reasoning import CHANNEL_CLOSE, CHANNEL_OPEN
from server.parsers.tool_calls import TOOL_CALL_OPEN


class ReasoningTokenCounter:
    def __init__(self, tokenizer, starts_in_reasoning: bool = False) -> None:
        ids = tokenizer.convert_tokens_to_ids([CHANNEL_OPEN, CHANNEL_CLOSE, TOOL_CALL_OPEN])
        unknown = getattr(tokenizer, "unk_token_id", None)
        # A tokenizer without the markers (not a Gemma 4 one) never reasons in this sense.
        self._open, self._close, self._call = (None, None, None) if unknown is not None and unknown in ids else ids
        self._inside = starts_in_reasoning and self._open is not None
        self.count = 0

    def add(self, token_ids: Iterable[int]) -> None:
        for t in token_ids:
            if t == self._call:
                self._inside = False
            if t == self._open:
                self._inside = True
            if self._inside:
                self.count += 1
            if t == self._close:
                self._inside = False
