"""Gemma 4 output parsers: the value grammar (parse_value, to_gemma4_value and their round trip) and the
special-token lexer. Recorded outputs streamed in every chunking: test_parsers_streaming.py; the call
forms and the official template's calls: test_parsers_tool_calls.py."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings

from server.parsers import ValueSyntaxError, parse_value, to_gemma4_value
from server.parsers.lexer import SpecialTokenLexer
from tests.unit.parser_support import JSONISH, Q

# ---------------------------------------------------------------------------------------------------
# value grammar

VALUES = [
    ("{}", {}),
    ("[]", []),
    ("{a:[]}", {"a": []}),
    (f"{Q}{Q}", ""),
    (f"{Q}a, b{Q}", "a, b"),
    (f"{Q}{{not:an, object}}{Q}", "{not:an, object}"),
    (f'{Q}say "hi": ok{Q}', 'say "hi": ok'),
    (f"{Q}line1\nline2\ttab{Q}", "line1\nline2\ttab"),
    (f"{Q}Zürich 東京 🚀{Q}", "Zürich 東京 🚀"),
    (f"{Q}[1,2]{Q}", "[1,2]"),
    (f"{Q}back\\slash{Q}", "back\\slash"),
    (f"{Q}<b>tag</b> a<c{Q}", "<b>tag</b> a<c"),
    ("0", 0),
    ("42", 42),
    ("-7", -7),
    ("3.25", 3.25),
    ("-0.5", -0.5),
    ("1e3", 1000.0),
    ("2.5E-2", 0.025),
    ("-1e+2", -100.0),
    ("123456789012345678901234567890", 123456789012345678901234567890),
    ("true", True),
    ("false", False),
    ("True", True),
    ("null", None),
    ("none", None),
    ("None", None),
    ("nil", None),
    ("[1,2.5,true,null,{Q}x{Q}]".replace("{Q}", Q), [1, 2.5, True, None, "x"]),
    ("{a:{b:{c:[1,[2,[3]]]}}}", {"a": {"b": {"c": [1, [2, [3]]]}}}),
    (f"{{location:{Q}Paris, FR{Q},days:2}}", {"location": "Paris, FR", "days": 2}),
    (f"{{{Q}quoted key{Q}:1}}", {"quoted key": 1}),  # the template's escape_keys form
    (" { a : 1 , b : [ 1 , 2 ] } ", {"a": 1, "b": [1, 2]}),  # whitespace between tokens
    ("{a:1,}", {"a": 1}),  # trailing comma
    ("[1,2,]", [1, 2]),
    ('{a:"json \\"str\\""}', {"a": 'json "str"'}),
    ("{city:Paris}", {"city": "Paris"}),  # delimiters dropped by the model: a bare word
    ("{a:1.}", {"a": "1."}),  # not a number, not dropped
    ("{a:1e999}", {"a": "1e999"}),  # inf is not JSON: the literal is kept
    ("{snake_case-key.v2:1}", {"snake_case-key.v2": 1}),
]


@pytest.mark.parametrize("text,expected", VALUES, ids=[v[0][:30] for v in VALUES])
def test_value_grammar(text, expected):
    got = parse_value(text)
    assert got == expected
    # same JSON, so types (bool vs int, int vs float) match too
    assert json.dumps(got) == json.dumps(expected)


BAD_VALUES = [
    "",
    "{",
    "{a:1",
    "{a:1}}",
    "[1,2",
    f"{{a:{Q}unterminated}}",
    "{a 1}",
    "{:1}",
    "{a:}",
    "{a:1 b:2}",
    "{a:1]",
    "[1}",
    "{a:b{c}}",
    f"{{a:x{Q}y{Q}}}",
    "{" * 5000 + "}" * 5000,  # nesting deeper than the recursion limit
]


@pytest.mark.parametrize("text", BAD_VALUES, ids=[v[:20] for v in BAD_VALUES])
def test_value_grammar_rejects(text):
    with pytest.raises(ValueSyntaxError):
        parse_value(text)


def test_to_gemma4_value_matches_template_rendering():
    assert to_gemma4_value({"location": "Paris", "days": 2}) == f"{{location:{Q}Paris{Q},days:2}}"
    assert to_gemma4_value([True, None, 1.5, {"a": []}]) == "[true,null,1.5,{a:[]}]"
    with pytest.raises(ValueError):
        to_gemma4_value(Q)
    with pytest.raises(ValueError):
        to_gemma4_value(float("nan"))


@settings(max_examples=200, deadline=None)
@given(JSONISH)
def test_value_round_trip(obj):
    assert json.dumps(parse_value(to_gemma4_value(obj))) == json.dumps(obj)


def test_lexer_events():
    lexer = SpecialTokenLexer(["<|a>", "<b|>"])
    events = lexer.feed("x<|a>y<b") + lexer.feed("|>z<|") + lexer.flush()
    assert events == [(False, "x"), (True, "<|a>"), (False, "y"), (True, "<b|>"), (False, "z"), (False, "<|")]
