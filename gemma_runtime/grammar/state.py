"""One request's grammar state: an xgrammar matcher behind an optional thought-channel gate.

The gate keeps reasoning free: with thinking on, the model's first token may open the thought channel
instead of starting the grammar; from there nothing is constrained until the channel closes, and the
grammar takes over at the next token. The state lives on the engine's `Sequence`, so it survives
preemption (recomputation re-prefills the tokens, the matcher already accepted them) and goes with
the request when it finishes or is aborted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch


class Phase(enum.Enum):
    MAY_THINK = "may_think"  # the next token may open the thought channel or start the grammar
    THINKING = "thinking"  # inside the thought channel: free text
    GRAMMAR = "grammar"


@dataclass(frozen=True)
class ThoughtTokens:
    open_id: int  # <|channel>
    close_id: int  # <channel|>


_START_PHASE = {"none": Phase.GRAMMAR, "optional": Phase.MAY_THINK, "open": Phase.THINKING}


class GrammarState:
    def __init__(self, matcher, thought: str, tokens: ThoughtTokens):
        self.matcher = matcher
        self.phase = _START_PHASE[thought]
        self.tokens = tokens
        self.rejected = False  # a token the grammar refused was appended (it never should be)

    @property
    def constrains_next(self) -> bool:
        """Whether the next token is masked (free text inside the thought channel is not)."""
        return self.phase is not Phase.THINKING and not self.rejected and not self.matcher.is_terminated()

    def fill(self, bits: torch.Tensor, row: int) -> None:
        """Writes the allowed next tokens into bits[row] (int32 words, xgrammar's layout)."""
        self.matcher.fill_next_token_bitmask(bits, row)
        self.fill_gate(bits, row)

    def fill_gate(self, bits: torch.Tensor, row: int) -> None:
        """Adds what the gate allows beside the grammar (the thought channel's opening token)."""
        if self.phase is Phase.MAY_THINK:
            word, bit = divmod(self.tokens.open_id, 32)
            bits[row, word] |= _bit(bit)

    def accept(self, token_id: int) -> None:
        if self.phase is Phase.THINKING:
            if token_id == self.tokens.close_id:
                self.phase = Phase.GRAMMAR
            return
        if self.phase is Phase.MAY_THINK:
            if token_id == self.tokens.open_id:
                self.phase = Phase.THINKING
                return
            self.phase = Phase.GRAMMAR
        if self.rejected or self.matcher.is_terminated():
            return
        if not self.matcher.accept_token(token_id):
            self.rejected = True


def _bit(bit: int) -> int:
    # bit 31 is the sign bit of an int32 word
    return (1 << bit) - (1 << 32) if bit == 31 else 1 << bit
