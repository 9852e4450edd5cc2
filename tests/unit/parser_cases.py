"""Recorded model outputs for the output parser tests (test_parsers_streaming.py): each `Case` is a text
with the reasoning, content and tool calls it must parse to, and the parser options it runs with."""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.unit.parser_support import Q, counter_ids


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
    Case(
        "plain_with_angles",
        "if a < b and c <| d <|x> <chan <tool then",
        None,
        "if a < b and c <| d <|x> <chan <tool then",
    ),
    Case("ends_with_token_prefix", "almost a token <|tool_ca", None, "almost a token <|tool_ca"),
    Case("plain_trailing_turn", "The answer is 4.<turn|>", None, "The answer is 4."),
    Case("trailing_eos", "Done.<turn|><eos>", None, "Done."),
    Case(
        "reasoning_content",
        "<|channel>thought\nThe user greets me.\nI greet back.<channel|>Hi there!<turn|>",
        "The user greets me.\nI greet back.",
        "Hi there!",
    ),
    Case("empty_thought_channel", "<|channel>thought\n<channel|>Just the answer.", None, "Just the answer."),
    Case("empty_thought_no_newline", "<|channel>thought<channel|>Answer", None, "Answer"),
    Case("empty_channel_no_label", "<|channel><channel|>Answer", None, "Answer"),
    Case("label_lookalike", "<|channel>thoughtful reply<channel|>x", "ful reply", "x"),
    Case("label_prefix_only", "<|channel>tho<channel|>x", "tho", "x"),
    Case(
        "unterminated_reasoning",
        "<|channel>thought\nStill thinking when the budget ran",
        "Still thinking when the budget ran",
        None,
    ),
    Case(
        "starts_in_reasoning",
        "reasoning from an open channel<channel|>answer",
        "reasoning from an open channel",
        "answer",
        options={"starts_in_reasoning": True},
    ),
    Case(
        "starts_in_reasoning_repeated_label",
        "<|channel>thought\nr<channel|>a",
        "r",
        "a",
        options={"starts_in_reasoning": True},
    ),
    Case("stray_channel_close", "<channel|>Answer<channel|>.", None, "Answer."),
    Case(
        "call_after_reasoning",
        f"<|channel>thought\nI need the weather.{WEATHER}<|tool_response>",
        "I need the weather.",
        None,
        (("get_weather", {"location": "Paris", "days": 2}),),
    ),
    Case(
        "call_after_closed_reasoning",
        f"<|channel>thought\nweather<channel|>{WEATHER}<|tool_response>",
        "weather",
        None,
        (("get_weather", {"location": "Paris", "days": 2}),),
    ),
    Case(
        "empty_thought_then_call",
        f"<|channel>thought\n<channel|>{WEATHER}",
        None,
        None,
        (("get_weather", {"location": "Paris", "days": 2}),),
    ),
    Case(
        "two_parallel_calls",
        WEATHER + TIME + "<|tool_response>",
        None,
        None,
        (("get_weather", {"location": "Paris", "days": 2}), ("get_time", {"tz": "Europe/Paris"})),
    ),
    Case(
        "content_then_call",
        "Let me check that for you.\n" + WEATHER,
        None,
        "Let me check that for you.\n",
        (("get_weather", {"location": "Paris", "days": 2}),),
    ),
    Case("zero_arg_call", "<|tool_call>call:list_files{}<tool_call|>", None, None, (("list_files", {}),)),
    Case(
        "tricky_string",
        f"<|tool_call>call:echo{{text:{Q}{TRICKY_STRING}{Q}}}<tool_call|>",
        None,
        None,
        (("echo", {"text": TRICKY_STRING}),),
    ),
    Case(
        "nested_values",
        f"<|tool_call>call:search{{filters:{{tags:[{Q}a{Q},{Q}b,c{Q}],range:{{min:-1.5,max:1e3}}}},"
        f"limit:10,exact:false,cursor:null,opts:{{}},ids:[]}}<tool_call|>",
        None,
        None,
        (
            (
                "search",
                {
                    "filters": {"tags": ["a", "b,c"], "range": {"min": -1.5, "max": 1000.0}},
                    "limit": 10,
                    "exact": False,
                    "cursor": None,
                    "opts": {},
                    "ids": [],
                },
            ),
        ),
    ),
    Case(
        "call_without_call_prefix",
        f"<|tool_call>get_weather{{location:{Q}Rome{Q}}}<tool_call|>",
        None,
        None,
        (("get_weather", {"location": "Rome"}),),
    ),
    Case(
        "bare_colon_call",
        f"<|tool_call>:get_weather{{location:{Q}Rome{Q}}}<tool_call|>",
        None,
        None,
        (("get_weather", {"location": "Rome"}),),
    ),
    Case(
        "parenthesised_arguments",
        f"<|tool_call>call:get_weather(location:{Q}Rome (IT){Q},days:2)<tool_call|>",
        None,
        None,
        (("get_weather", {"location": "Rome (IT)", "days": 2}),),
    ),
    Case(
        "bare_colon_parenthesised",
        f"<|tool_call>:f()<tool_call|>{TIME}",
        None,
        None,
        (("f", {}), ("get_time", {"tz": "Europe/Paris"})),
    ),
    Case("parenthesised_unclosed", "<|tool_call>call:f(a:1<tool_call|>x", None, "<|tool_call>call:f(a:1<tool_call|>x"),
    Case(
        "parenthesised_mismatched", "<|tool_call>call:f(a:1}<tool_call|>", None, "<|tool_call>call:f(a:1}<tool_call|>"
    ),
    Case("double_colon_is_text", "<|tool_call>::f{a:1}<tool_call|>", None, "<|tool_call>::f{a:1}<tool_call|>"),
    Case(
        "content_after_call",
        WEATHER + "Anything else?",
        None,
        "Anything else?",
        (("get_weather", {"location": "Paris", "days": 2}),),
    ),
    Case(
        "malformed_call",
        f"<|tool_call>call:get_weather{{location:{Q}Paris}}<tool_call|>",
        None,
        f"<|tool_call>call:get_weather{{location:{Q}Paris}}<tool_call|>",
    ),
    Case("malformed_no_name", "<|tool_call>{a:1}<tool_call|>ok", None, "<|tool_call>{a:1}<tool_call|>ok"),
    Case(
        "malformed_then_valid",
        f"<|tool_call>call:broken{{a:1 b:2}}<tool_call|>{TIME}",
        None,
        "<|tool_call>call:broken{a:1 b:2}<tool_call|>",
        (("get_time", {"tz": "Europe/Paris"}),),
    ),
    Case(
        "unterminated_call",
        f"Checking.<|tool_call>call:get_weather{{location:{Q}Par",
        None,
        f"Checking.<|tool_call>call:get_weather{{location:{Q}Par",
    ),
    Case(
        "complete_body_no_close",
        f"{WEATHER[: -len('<tool_call|>')]}<|tool_response>",
        None,
        f"<|tool_call>call:get_weather{{location:{Q}Paris{Q},days:2}}",
    ),
    Case(
        "call_restarted",
        f"<|tool_call>call:a{{x:{TIME}",
        None,
        "<|tool_call>call:a{x:",
        (("get_time", {"tz": "Europe/Paris"}),),
    ),
    Case(
        "close_tag_inside_string",
        f"<|tool_call>call:f{{s:{Q}a<tool_call|>b{Q}}}<tool_call|>",
        None,
        f"<|tool_call>call:f{{s:{Q}a<tool_call|>b{Q}}}",
    ),
    Case("stray_call_close", "a<tool_call|>b", None, "ab"),
    Case("calls_off", "x" + WEATHER, None, "x" + WEATHER, options={"parse_tool_calls": False}),
    Case(
        "reasoning_off",
        "<|channel>thought\nhmm<channel|>ok<turn|>",
        None,
        "<|channel>thought\nhmm<channel|>ok",
        options={"parse_reasoning": False},
    ),
    Case(
        "reasoning_off_call_on",
        f"<|channel>thought\nhmm<channel|>{WEATHER}",
        None,
        "<|channel>thought\nhmm<channel|>",
        (("get_weather", {"location": "Paris", "days": 2}),),
        options={"parse_reasoning": False},
    ),
    Case(
        "call_in_reasoning_calls_off",
        f"<|channel>thought\nx{WEATHER}<channel|>y",
        f"x{WEATHER}",
        "y",
        options={"parse_tool_calls": False},
    ),
    Case(
        "both_off",
        f"<|channel>thought\n<channel|>{WEATHER}<eos>",
        None,
        f"<|channel>thought\n<channel|>{WEATHER}",
        options={"parse_reasoning": False, "parse_tool_calls": False},
    ),
    Case(
        "unicode_everywhere",
        f"<|channel>thought\nПривет 🤔<channel|>日本語 ✓<|tool_call>call:say{{t:{Q}é{Q}}}<tool_call|>",
        "Привет 🤔",
        "日本語 ✓",
        (("say", {"t": "é"}),),
    ),
]
CASE_IDS = [c.name for c in CASES]


def options(case: Case) -> dict:
    return {**case.options, "id_factory": counter_ids()}
