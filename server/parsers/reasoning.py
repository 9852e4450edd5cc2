"""The Gemma 4 thought channel: `<|channel>thought\n...reasoning...<channel|>`.

The channel name `thought` is plain text after `<|channel>`; it is a label, not reasoning, so it is
stripped. It arrives in pieces when streaming, so the decision waits until the text seen after
`<|channel>` either is no longer a prefix of the label or the next special token / the end arrives.
"""

from __future__ import annotations

CHANNEL_OPEN = "<|channel>"
CHANNEL_CLOSE = "<channel|>"
THOUGHT_LABEL = "thought\n"
_LABEL_WORD = "thought"  # seen without its newline right before `<channel|>` in empty channels


def label_undecided(pending: str) -> bool:
    """True while `pending` (text after `<|channel>`) could still grow into the full label."""
    return len(pending) < len(THOUGHT_LABEL) and THOUGHT_LABEL.startswith(pending)


def strip_label(pending: str) -> str:
    """The reasoning text in `pending` once the label question is settled."""
    for label in (THOUGHT_LABEL, _LABEL_WORD):
        if pending.startswith(label):
            return pending[len(label) :]
    return pending
