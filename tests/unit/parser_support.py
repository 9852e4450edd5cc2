"""Shared by the output parser tests (test_parsers*.py): the string delimiter token, call-id factories,
the hypothesis strategies for Gemma 4 values and call arguments, and the (reasoning, content, calls)
summary a parsed message is compared by."""

from __future__ import annotations

import itertools
import re

from hypothesis import strategies as st

from server.parsers import ParsedMessage

Q = '<|"|>'  # the string delimiter token
CALL_ID = re.compile(r"call_[A-Za-z0-9]{24}")


def counter_ids():
    n = itertools.count()
    return lambda: f"call_{next(n)}"


KEYS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,11}", fullmatch=True)
STRINGS = st.text(max_size=40).filter(lambda s: Q not in s)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | STRINGS
)
JSONISH = st.recursive(
    SCALARS,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(KEYS, kids, max_size=4),
    max_leaves=12,
)
ARGS = st.dictionaries(KEYS, JSONISH, max_size=5)


def summary(msg: ParsedMessage):
    return msg.reasoning, msg.content, [(c.name, c.arguments) for c in msg.tool_calls]
