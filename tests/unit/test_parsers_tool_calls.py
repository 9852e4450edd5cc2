"""Gemma 4 output parsers and tool calls as checkpoints write them: the calls the official chat template
writes into history read back (streaming and not), every call form real checkpoints emit, and a broken
parenthesised call left as content."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2.sandbox
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.parsers import Gemma4OutputParser, ParsedMessage, parse_output, to_gemma4_value
from tests.unit.parser_support import ARGS, KEYS, summary

TEMPLATE = Path(__file__).resolve().parents[3] / "shared/reference/gemma4_chat_template.official.jinja"

# ---------------------------------------------------------------------------------------------------
# the official chat template writes calls into history; the parser must read them back


@pytest.fixture(scope="module")
def template():
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(TEMPLATE.read_text())


def model_turn(template, calls: list[tuple[str, dict]]) -> str:
    messages = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": a}}
                for i, (n, a) in enumerate(calls)
            ],
        },
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
        (n, json.loads(json.dumps(a))) for n, a in calls
    ]
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
@given(
    calls=st.lists(st.tuples(KEYS, ARGS, st.sampled_from(sorted(CALL_FORMS))), min_size=1, max_size=3), data=st.data()
)
def test_every_call_form_parses_streaming_and_not(calls, data):
    text = (
        "".join(CALL_FORMS[form](name, to_gemma4_value(args)[1:-1]) for name, args, form in calls) + "<|tool_response>"
    )
    msg = parse_output(text)
    assert msg.content is None and msg.reasoning is None
    assert [(c.name, json.loads(c.arguments)) for c in msg.tool_calls] == [
        (n, json.loads(json.dumps(a))) for n, a, _ in calls
    ]
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
    broken = good.replace(
        ")<tool_call|>", "}<tool_call|>" if cut == 1 else ("<tool_call|>" if cut == 2 else ")x<tool_call|>")
    )
    msg = parse_output(broken)
    assert msg.tool_calls == ()
    assert msg.content == broken
