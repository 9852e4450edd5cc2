"""Gemma 4 output parsers on recorded outputs: the non-streaming parse, streaming == non-streaming for any
chunking (every two-way split, one character at a time, random splits), and the streaming behaviour
beyond equality (what is held back, when a call is emitted, ids, finish)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.parsers import Gemma4OutputParser, ParsedDelta, ParsedMessage, parse_output
from tests.unit.parser_cases import CASE_IDS, CASES, TIME, WEATHER, Case, options
from tests.unit.parser_support import CALL_ID, summary

# ---------------------------------------------------------------------------------------------------
# recorded outputs (tests/unit/parser_cases.py): the hand-written expectations, then the streaming properties


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_non_streaming(case):
    msg = parse_output(case.text, **options(case))
    assert msg.reasoning == case.reasoning
    assert msg.content == case.content
    assert [(c.name, json.loads(c.arguments)) for c in msg.tool_calls] == [(n, a) for n, a in case.calls]
    for call, (_, args) in zip(msg.tool_calls, case.calls):
        assert call.arguments == json.dumps(args, ensure_ascii=False)  # exact serialization, not just equal JSON
    assert [c.id for c in msg.tool_calls] == [f"call_{i}" for i in range(len(case.calls))]


def stream(case: Case, chunks: list[str]) -> tuple[ParsedMessage, list[ParsedDelta]]:
    parser = Gemma4OutputParser(**options(case))
    deltas = [parser.feed(c) for c in chunks] + [parser.finish()]
    assert parser.saw_tool_calls == bool(case.calls)
    return ParsedMessage.from_deltas(deltas), deltas


def check_stream(case: Case, chunks: list[str], expected) -> None:
    merged, deltas = stream(case, chunks)
    assert summary(merged) == expected, chunks
    # the OpenAI chunk rules: each call's id and name exactly once, on its first delta, indices in order
    seen: dict[int, int] = {}
    for delta in deltas:
        for d in delta.tool_calls:
            first = d.index not in seen
            seen[d.index] = seen.get(d.index, 0) + 1
            assert (d.id is not None, d.name is not None) == (first, first)
    assert sorted(seen) == list(range(len(seen)))
    names = [d.name for delta in deltas for d in delta.tool_calls if d.name is not None]
    assert names == [n for n, _ in case.calls]
    for call in merged.tool_calls:
        assert isinstance(json.loads(call.arguments), dict)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_two_way_split(case):
    expected = summary(parse_output(case.text, **options(case)))
    for i in range(len(case.text) + 1):
        check_stream(case, [case.text[:i], case.text[i:]], expected)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_one_char_at_a_time(case):
    expected = summary(parse_output(case.text, **options(case)))
    check_stream(case, list(case.text), expected)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_splits(case, data):
    n = len(case.text)
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=max(1, n // 3)), label="cuts"))
    chunks = [case.text[a:b] for a, b in zip([0, *cuts], [*cuts, n])]
    check_stream(case, chunks, summary(parse_output(case.text, **options(case))))


# ---------------------------------------------------------------------------------------------------
# streaming behaviour beyond equality


def test_content_is_not_held_back():
    parser = Gemma4OutputParser()
    assert parser.feed("Hello").content == "Hello"
    assert parser.feed(" a <").content == " a "  # '<' might start a special token
    assert parser.feed("b").content == "<b"  # ...and now it cannot
    assert parser.feed(" <|tool").content == " "
    assert parser.feed("box|>").content == "<|toolbox|>"
    assert parser.feed("<|channel").content == ""
    d = parser.feed(">thought\nhm")
    assert (d.reasoning, d.content) == ("hm", "")
    assert parser.feed("m").reasoning == "m"
    assert parser.finish() == ParsedDelta()


def test_tokens_that_do_not_matter_are_not_held():
    parser = Gemma4OutputParser(parse_reasoning=False, parse_tool_calls=False)
    assert parser.feed("a <|channel").content == "a <|channel"
    assert parser.feed("x <tur").content == "x "  # stop tokens are always recognised


def test_call_is_emitted_whole_at_its_close_tag():
    parser = Gemma4OutputParser(id_factory=lambda: "call_x")
    head, tail = WEATHER[:-3], WEATHER[-3:]
    assert parser.feed("Sure." + head) == ParsedDelta(content="Sure.")
    assert not parser.saw_tool_calls
    d = parser.feed(tail)
    assert [(c.index, c.id, c.name, c.arguments) for c in d.tool_calls] == [
        (0, "call_x", "get_weather", '{"location": "Paris", "days": 2}')
    ]
    assert parser.saw_tool_calls
    assert parser.finish() == ParsedDelta()


def test_default_ids():
    msg = parse_output(WEATHER + TIME)
    ids = [c.id for c in msg.tool_calls]
    assert all(CALL_ID.fullmatch(i) for i in ids) and len(set(ids)) == 2


def test_feed_after_finish_raises():
    parser = Gemma4OutputParser()
    parser.finish()
    with pytest.raises(RuntimeError):
        parser.feed("x")
