"""Gemma 4 output parsers: value grammar, non-streaming cases, and streaming == non-streaming for any chunking."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2.sandbox
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.parsers import (
    Gemma4OutputParser,
    ParsedDelta,
    ParsedMessage,
    ValueSyntaxError,
    parse_output,
    parse_value,
    to_gemma4_value,
)
from server.parsers.lexer import SpecialTokenLexer

Q = '<|"|>'  # the string delimiter token
TEMPLATE = Path(__file__).resolve().parents[3] / "shared/reference/gemma4_chat_template.official.jinja"
CALL_ID = re.compile(r"call_[A-Za-z0-9]{24}")


def counter_ids():
    n = itertools.count()
    return lambda: f"call_{next(n)}"


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


@settings(max_examples=200, deadline=None)
@given(JSONISH)
def test_value_round_trip(obj):
    assert json.dumps(parse_value(to_gemma4_value(obj))) == json.dumps(obj)


# ---------------------------------------------------------------------------------------------------
# recorded outputs: hand-written expectations, then the streaming properties over all of them


@dataclass(frozen=True)
class Case:
    name: str
    text: str
    reasoning: str | None
    content: str | None
    calls: tuple[tuple[str, dict], ...] = ()
    options: dict = field(default_factory=dict)


WEATHER = f"<|tool_call>call:get_weather{{location:{Q}Paris{Q},days:2}}<tool_call|>"
TIME = f"<|tool_call>call:get_time{{tz:{Q}Europe/Paris{Q}}}<tool_call|>"
TRICKY_STRING = "a, b: {c} [d] \"e\" 'f'\nnew line <b> Zürich 東京 🚀 call:x{}"

CASES = [
    Case("plain", "Hello, world!", None, "Hello, world!"),
    Case("plain_with_angles", "if a < b and c <| d <|x> <chan <tool then", None,
         "if a < b and c <| d <|x> <chan <tool then"),
    Case("ends_with_token_prefix", "almost a token <|tool_ca", None, "almost a token <|tool_ca"),
    Case("plain_trailing_turn", "The answer is 4.<turn|>", None, "The answer is 4."),
    Case("trailing_eos", "Done.<turn|><eos>", None, "Done."),
    Case("reasoning_content", "<|channel>thought\nThe user greets me.\nI greet back.<channel|>Hi there!<turn|>",
         "The user greets me.\nI greet back.", "Hi there!"),
    Case("empty_thought_channel", "<|channel>thought\n<channel|>Just the answer.", None, "Just the answer."),
    Case("empty_thought_no_newline", "<|channel>thought<channel|>Answer", None, "Answer"),
    Case("empty_channel_no_label", "<|channel><channel|>Answer", None, "Answer"),
    Case("label_lookalike", "<|channel>thoughtful reply<channel|>x", "ful reply", "x"),
    Case("label_prefix_only", "<|channel>tho<channel|>x", "tho", "x"),
    Case("unterminated_reasoning", "<|channel>thought\nStill thinking when the budget ran", "Still thinking when the budget ran", None),
    Case("starts_in_reasoning", "reasoning from an open channel<channel|>answer", "reasoning from an open channel", "answer",
         options={"starts_in_reasoning": True}),
    Case("starts_in_reasoning_repeated_label", "<|channel>thought\nr<channel|>a", "r", "a",
         options={"starts_in_reasoning": True}),
    Case("stray_channel_close", "<channel|>Answer<channel|>.", None, "Answer."),
    Case("call_after_reasoning", f"<|channel>thought\nI need the weather.{WEATHER}<|tool_response>",
         "I need the weather.", None, (("get_weather", {"location": "Paris", "days": 2}),)),
    Case("call_after_closed_reasoning", f"<|channel>thought\nweather<channel|>{WEATHER}<|tool_response>",
         "weather", None, (("get_weather", {"location": "Paris", "days": 2}),)),
    Case("empty_thought_then_call", f"<|channel>thought\n<channel|>{WEATHER}", None, None,
         (("get_weather", {"location": "Paris", "days": 2}),)),
    Case("two_parallel_calls", WEATHER + TIME + "<|tool_response>", None, None,
         (("get_weather", {"location": "Paris", "days": 2}), ("get_time", {"tz": "Europe/Paris"}))),
    Case("content_then_call", "Let me check that for you.\n" + WEATHER, None, "Let me check that for you.\n",
         (("get_weather", {"location": "Paris", "days": 2}),)),
    Case("zero_arg_call", "<|tool_call>call:list_files{}<tool_call|>", None, None, (("list_files", {}),)),
    Case("tricky_string", f"<|tool_call>call:echo{{text:{Q}{TRICKY_STRING}{Q}}}<tool_call|>", None, None,
         (("echo", {"text": TRICKY_STRING}),)),
    Case("nested_values",
         f"<|tool_call>call:search{{filters:{{tags:[{Q}a{Q},{Q}b,c{Q}],range:{{min:-1.5,max:1e3}}}},"
         f"limit:10,exact:false,cursor:null,opts:{{}},ids:[]}}<tool_call|>",
         None, None,
         (("search", {"filters": {"tags": ["a", "b,c"], "range": {"min": -1.5, "max": 1000.0}},
                      "limit": 10, "exact": False, "cursor": None, "opts": {}, "ids": []}),)),
    Case("call_without_call_prefix", f"<|tool_call>get_weather{{location:{Q}Rome{Q}}}<tool_call|>", None, None,
         (("get_weather", {"location": "Rome"}),)),
    Case("bare_colon_call", f"<|tool_call>:get_weather{{location:{Q}Rome{Q}}}<tool_call|>", None, None,
         (("get_weather", {"location": "Rome"}),)),
    Case("parenthesised_arguments", f"<|tool_call>call:get_weather(location:{Q}Rome (IT){Q},days:2)<tool_call|>", None, None,
         (("get_weather", {"location": "Rome (IT)", "days": 2}),)),
    Case("bare_colon_parenthesised", f"<|tool_call>:f()<tool_call|>{TIME}", None, None, (("f", {}), ("get_time", {"tz": "Europe/Paris"}))),
    Case("parenthesised_unclosed", "<|tool_call>call:f(a:1<tool_call|>x", None, "<|tool_call>call:f(a:1<tool_call|>x"),
    Case("parenthesised_mismatched", "<|tool_call>call:f(a:1}<tool_call|>", None, "<|tool_call>call:f(a:1}<tool_call|>"),
    Case("double_colon_is_text", "<|tool_call>::f{a:1}<tool_call|>", None, "<|tool_call>::f{a:1}<tool_call|>"),
    Case("content_after_call", WEATHER + "Anything else?", None, "Anything else?",
         (("get_weather", {"location": "Paris", "days": 2}),)),
    Case("malformed_call", f"<|tool_call>call:get_weather{{location:{Q}Paris}}<tool_call|>", None,
         f"<|tool_call>call:get_weather{{location:{Q}Paris}}<tool_call|>"),
    Case("malformed_no_name", "<|tool_call>{a:1}<tool_call|>ok", None, "<|tool_call>{a:1}<tool_call|>ok"),
    Case("malformed_then_valid", f"<|tool_call>call:broken{{a:1 b:2}}<tool_call|>{TIME}", None,
         "<|tool_call>call:broken{a:1 b:2}<tool_call|>", (("get_time", {"tz": "Europe/Paris"}),)),
    Case("unterminated_call", f"Checking.<|tool_call>call:get_weather{{location:{Q}Par", None,
         f"Checking.<|tool_call>call:get_weather{{location:{Q}Par"),
    Case("complete_body_no_close", f"{WEATHER[:-len('<tool_call|>')]}<|tool_response>", None,
         f"<|tool_call>call:get_weather{{location:{Q}Paris{Q},days:2}}"),
    Case("call_restarted", f"<|tool_call>call:a{{x:{TIME}", None, "<|tool_call>call:a{x:",
         (("get_time", {"tz": "Europe/Paris"}),)),
    Case("close_tag_inside_string", f"<|tool_call>call:f{{s:{Q}a<tool_call|>b{Q}}}<tool_call|>", None,
         f"<|tool_call>call:f{{s:{Q}a<tool_call|>b{Q}}}"),
    Case("stray_call_close", "a<tool_call|>b", None, "ab"),
    Case("calls_off", "x" + WEATHER, None, "x" + WEATHER, options={"parse_tool_calls": False}),
    Case("reasoning_off", "<|channel>thought\nhmm<channel|>ok<turn|>", None, "<|channel>thought\nhmm<channel|>ok",
         options={"parse_reasoning": False}),
    Case("reasoning_off_call_on", f"<|channel>thought\nhmm<channel|>{WEATHER}", None, "<|channel>thought\nhmm<channel|>",
         (("get_weather", {"location": "Paris", "days": 2}),), options={"parse_reasoning": False}),
    Case("call_in_reasoning_calls_off", f"<|channel>thought\nx{WEATHER}<channel|>y", f"x{WEATHER}", "y",
         options={"parse_tool_calls": False}),
    Case("both_off", f"<|channel>thought\n<channel|>{WEATHER}<eos>", None, f"<|channel>thought\n<channel|>{WEATHER}",
         options={"parse_reasoning": False, "parse_tool_calls": False}),
    Case("unicode_everywhere", f"<|channel>thought\nПривет 🤔<channel|>日本語 ✓<|tool_call>call:say{{t:{Q}é{Q}}}<tool_call|>",
         "Привет 🤔", "日本語 ✓", (("say", {"t": "é"}),)),
]
CASE_IDS = [c.name for c in CASES]


def options(case: Case) -> dict:
    return {**case.options, "id_factory": counter_ids()}


def summary(msg: ParsedMessage):
    return msg.reasoning, msg.content, [(c.name, c.arguments) for c in msg.tool_calls]


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
        (0, "call_x", "get_weather", '{"location": "Paris", "days": 2}')]
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


def test_lexer_events():
    lexer = SpecialTokenLexer(["<|a>", "<b|>"])
    events = lexer.feed("x<|a>y<b") + lexer.feed("|>z<|") + lexer.flush()
    assert events == [(False, "x"), (True, "<|a>"), (False, "y"), (True, "<b|>"), (False, "z"), (False, "<|")]


# ---------------------------------------------------------------------------------------------------
# the official chat template writes calls into history; the parser must read them back


@pytest.fixture(scope="module")
def template():
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(TEMPLATE.read_text())


def model_turn(template, calls: list[tuple[str, dict]]) -> str:
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": a}}
            for i, (n, a) in enumerate(calls)]},
    ]
    text = template.render(messages=messages, bos_token="<bos>", add_generation_prompt=False)
    return text.split("<|turn>model\n", 1)[1]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=st.lists(st.tuples(KEYS, ARGS), min_size=1, max_size=3), data=st.data())
def test_reads_what_the_official_template_writes(template, calls, data):
    text = model_turn(template, calls)
    assert text.endswith("<|tool_response>")
    msg = parse_output(text)
    assert msg.content is None and msg.reasoning is None
    # the template sorts keys and renders floats with str(): compare values, not text
    assert [(c.name, json.loads(c.arguments)) for c in msg.tool_calls] == [
        (n, json.loads(json.dumps(a))) for n, a in calls]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=20)))
    parser = Gemma4OutputParser()
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    merged = ParsedMessage.from_deltas([parser.feed(c) for c in chunks] + [parser.finish()])
    assert summary(merged)[2] == summary(msg)[2]


# the other call forms real checkpoints emit: a bare `:` (no `call`) and parenthesised arguments
CALL_FORMS = {
    "call_braces": lambda name, body: f"<|tool_call>call:{name}{{{body}}}<tool_call|>",
    "bare_colon": lambda name, body: f"<|tool_call>:{name}{{{body}}}<tool_call|>",
    "no_call": lambda name, body: f"<|tool_call>{name}{{{body}}}<tool_call|>",
    "parentheses": lambda name, body: f"<|tool_call>call:{name}({body})<tool_call|>",
    "bare_colon_parentheses": lambda name, body: f"<|tool_call>:{name}({body})<tool_call|>",
}


@settings(max_examples=60, deadline=None)
@given(calls=st.lists(st.tuples(KEYS, ARGS, st.sampled_from(sorted(CALL_FORMS))), min_size=1, max_size=3), data=st.data())
def test_every_call_form_parses_streaming_and_not(calls, data):
    text = "".join(CALL_FORMS[form](name, to_gemma4_value(args)[1:-1]) for name, args, form in calls) + "<|tool_response>"
    msg = parse_output(text)
    assert msg.content is None and msg.reasoning is None
    assert [(c.name, json.loads(c.arguments)) for c in msg.tool_calls] == [
        (n, json.loads(json.dumps(a))) for n, a, _ in calls]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=20)))
    parser = Gemma4OutputParser()
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    merged = ParsedMessage.from_deltas([parser.feed(c) for c in chunks] + [parser.finish()])
    assert summary(merged)[2] == summary(msg)[2]


@settings(max_examples=40, deadline=None)
@given(name=KEYS, args=ARGS, cut=st.integers(1, 3), form=st.sampled_from(["parentheses", "bare_colon_parentheses"]))
def test_a_broken_call_form_stays_content(name, args, cut, form):
    """A parenthesised call missing its `)` (or with `}` in its place) is not a call: the text is content."""
    good = CALL_FORMS[form](name, to_gemma4_value(args)[1:-1])
    broken = good.replace(")<tool_call|>", "}<tool_call|>" if cut == 1 else ("<tool_call|>" if cut == 2 else ")x<tool_call|>"))
    msg = parse_output(broken)
    assert msg.tool_calls == ()
    assert msg.content == broken
