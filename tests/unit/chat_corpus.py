"""Conversations that exercise every part of the Gemma 4 chat format.

Each entry: {"name", "messages", "tools" (list or None), "kwargs" (extra apply_chat_template kwargs,
always with add_generation_prompt; enable_thinking only when the case sets it)}. Reused by the
chat-template conformance test and by anything else that needs realistic prompts. The tools they
declare: chat_tools.py.
"""

from __future__ import annotations

import copy

from tests.unit.chat_tools import (
    CALCULATOR_TOOL,
    FLIGHTS_TOOL,
    ODD_SCHEMA_TOOL,
    TIME_TOOL,
    UNTYPED_PARAMS_TOOL,
    WEATHER_TOOL,
)

# ---------------------------------------------------------------- message helpers


def _call(call_id: str, name: str, arguments) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _tool(call_id: str, content, name: str | None = None) -> dict:
    message = {"role": "tool", "tool_call_id": call_id, "content": content}
    if name is not None:
        message["name"] = name
    return message


def _case(name: str, messages: list, tools=None, generation_prompt: bool = True, **kwargs) -> dict:
    return {
        "name": name,
        "messages": messages,
        "tools": tools,
        "kwargs": {"add_generation_prompt": generation_prompt, **kwargs},
    }


USER_HI = {"role": "user", "content": "Hi"}
WEATHER_Q = {"role": "user", "content": "What's the weather in Paris?"}
PARIS_CALL = {"role": "assistant", "tool_calls": [_call("c1", "get_weather", {"location": "Paris"})]}
PARIS_IMAGE_URL = "https://example.com/paris.png"

# ---------------------------------------------------------------- corpus

CHAT_CORPUS: list[dict] = [
    _case("plain_default_thinking", [USER_HI]),
    _case("plain_thinking_off", [USER_HI], enable_thinking=False),
    _case("plain_thinking_on", [USER_HI], enable_thinking=True),
    _case("system_thinking_on", [{"role": "system", "content": "You are helpful."}, USER_HI], enable_thinking=True),
    _case("developer_role", [{"role": "developer", "content": "  Answer in French.\n"}, USER_HI]),
    _case("system_only", [{"role": "system", "content": "You are terse."}]),
    _case(
        "multi_turn",
        [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "  And times three?  "},
        ],
    ),
    _case(
        "assistant_last_no_prompt",
        [USER_HI, {"role": "assistant", "content": "Hello! How can I help?"}],
        generation_prompt=False,
    ),
    _case("user_last_no_prompt", [USER_HI], generation_prompt=False, enable_thinking=True),
    _case(
        "past_thinking_stripped",
        [
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "<|channel>thought\nThe user asks about France.<channel|>Paris."},
            {"role": "user", "content": "And Italy?"},
        ],
        enable_thinking=True,
    ),
    _case(
        "stray_and_unclosed_channels",
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "first<channel|> second <|channel>thought\nnever closed"},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "x<|channel>t1<channel|>y<|channel>t2<channel|>z"},
        ],
        generation_prompt=False,
    ),
    _case(
        "assistant_list_content",
        [
            USER_HI,
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "<|channel>thought\nhmm<channel|> Hello "},
                    {"type": "text", "text": " there."},
                ],
            },
            {"role": "user", "content": [{"type": "text", "text": " Bye "}]},
        ],
    ),
    _case("one_tool_no_system", [WEATHER_Q], tools=[WEATHER_TOOL]),
    _case(
        "system_and_many_tools",
        [{"role": "system", "content": "Use tools when useful."}, WEATHER_Q],
        tools=[WEATHER_TOOL, FLIGHTS_TOOL, TIME_TOOL, CALCULATOR_TOOL],
    ),
    _case(
        "developer_tools_thinking",
        [{"role": "developer", "content": "Be precise."}, WEATHER_Q],
        tools=[FLIGHTS_TOOL],
        enable_thinking=True,
    ),
    _case("odd_schemas", [USER_HI], tools=[ODD_SCHEMA_TOOL, UNTYPED_PARAMS_TOOL]),
    _case("tool_call_unanswered", [WEATHER_Q, PARIS_CALL], tools=[WEATHER_TOOL]),
    _case("tool_call_unanswered_no_prompt", [WEATHER_Q, PARIS_CALL], tools=[WEATHER_TOOL], generation_prompt=False),
    _case("tool_response_string", [WEATHER_Q, PARIS_CALL, _tool("c1", '{"temp": 21}')], tools=[WEATHER_TOOL]),
    _case(
        "tool_response_list_content",
        [WEATHER_Q, PARIS_CALL, _tool("c1", [{"type": "text", "text": "sunny, "}, {"type": "text", "text": "21C"}])],
        tools=[WEATHER_TOOL],
    ),
    _case(
        "tool_response_then_answer",
        [
            WEATHER_Q,
            PARIS_CALL,
            _tool("c1", "sunny"),
            {"role": "assistant", "content": "It is sunny."},
            {"role": "user", "content": "Thanks"},
        ],
        tools=[WEATHER_TOOL],
    ),
    _case(
        "parallel_calls_out_of_order",
        [
            {"role": "user", "content": "Weather in Paris and Rome, and the time?"},
            {
                "role": "assistant",
                "tool_calls": [
                    _call("a", "get_weather", {"location": "Paris", "unit": "celsius", "days": 2}),
                    _call("b", "get_weather", {"location": "Rome"}),
                    _call("c", "get_time", {}),
                ],
            },
            _tool("b", "rainy"),
            _tool("a", "sunny"),
            _tool("c", "12:00"),
        ],
        tools=[WEATHER_TOOL, TIME_TOOL],
    ),
    _case(
        "tool_name_fallback",
        [WEATHER_Q, PARIS_CALL, _tool("unknown-id", "cloudy", name="weather_service")],
        tools=[WEATHER_TOOL],
    ),
    _case(
        "nested_arguments",
        [
            {"role": "user", "content": "Book it"},
            {
                "role": "assistant",
                "tool_calls": [
                    _call(
                        "f1",
                        "search_flights",
                        {
                            "origin": "CDG",
                            "destination": "FCO",
                            "passengers": [{"name": "Ann", "age": 34, "seat": "aisle"}, {"name": "Bo", "age": 7}],
                            "filters": {"max_price": 199.5, "airlines": ["AF", "AZ"], "nonstop": True},
                            "flexible": False,
                            "note": None,
                            "Zulu": "last?",
                            "alpha": "first",
                        },
                    )
                ],
            },
            _tool("f1", [{"type": "text", "text": '[{"flight": "AF1204", "price": 150}]'}]),
            {"role": "assistant", "content": "Found AF1204 for 150 euros."},
        ],
        tools=[FLIGHTS_TOOL],
        generation_prompt=False,
    ),
    _case(
        "string_arguments_pasted",
        [
            WEATHER_Q,
            {"role": "assistant", "tool_calls": [_call("s1", "get_weather", '{"location": "Paris"}')]},
            _tool("s1", "sunny"),
        ],
        tools=[WEATHER_TOOL],
    ),
    _case(
        "call_with_text_and_response",
        [
            WEATHER_Q,
            {"role": "assistant", "content": "Let me check.", "tool_calls": PARIS_CALL["tool_calls"]},
            _tool("c1", "sunny"),
            {"role": "assistant", "content": "Sunny in Paris."},
        ],
        tools=[WEATHER_TOOL],
    ),
    _case(
        "agentic_reasoning_interleaved",
        [
            {"role": "user", "content": "Plan a trip"},
            {"role": "assistant", "content": "Old answer.", "reasoning_content": "old reasoning, before the last user"},
            {"role": "user", "content": "Check the weather in Paris, then compute 21*2."},
            {
                "role": "assistant",
                "reasoning_content": "I need the weather first.",
                "tool_calls": PARIS_CALL["tool_calls"],
            },
            _tool("c1", "21 degrees"),
            {
                "role": "assistant",
                "reasoning": "Now multiply.",
                "tool_calls": [_call("c2", "calculate", {"expression": "21*2"})],
            },
            _tool("c2", "42"),
        ],
        tools=[WEATHER_TOOL, CALCULATOR_TOOL],
        enable_thinking=True,
    ),
    _case(
        "reasoning_without_calls_dropped",
        [USER_HI, {"role": "assistant", "content": "Hello!", "reasoning_content": "greet back"}],
        generation_prompt=False,
        enable_thinking=True,
    ),
    _case(
        "thinking_tool_response_prompt",
        [WEATHER_Q, {**PARIS_CALL, "reasoning_content": "Call the tool."}, _tool("c1", "sunny")],
        tools=[WEATHER_TOOL],
        enable_thinking=True,
    ),
    _case(
        "legacy_tool_responses",
        [
            WEATHER_Q,
            {
                "role": "assistant",
                "tool_calls": PARIS_CALL["tool_calls"],
                "tool_responses": [
                    {"name": "get_weather", "response": {"temp": 21, "ok": True, "items": [1, 2], "msg": "hey"}},
                    {"response": "no name"},
                ],
            },
            {"role": "assistant", "content": "Done."},
        ],
        tools=[WEATHER_TOOL],
    ),
    _case(
        "image_in_user_turn",
        [
            {
                "role": "user",
                "content": [{"type": "image", "url": PARIS_IMAGE_URL}, {"type": "text", "text": "Describe."}],
            }
        ],
    ),
    _case(
        "multiple_images_multi_turn",
        [
            {"role": "system", "content": "You describe pictures."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare "},
                    {"type": "image", "url": PARIS_IMAGE_URL},
                    {"type": "text", "text": " and "},
                    {"type": "image", "url": "https://example.com/rome.png"},
                ],
            },
            {"role": "assistant", "content": "The first is Paris."},
            {"role": "user", "content": [{"type": "image", "url": PARIS_IMAGE_URL}]},
        ],
        enable_thinking=True,
    ),
    _case(
        "audio_and_video_parts",
        [{"role": "user", "content": [{"type": "audio"}, {"type": "video"}, {"type": "text", "text": "Transcribe."}]}],
    ),
    _case(
        "image_after_unanswered_call",
        [WEATHER_Q, {**PARIS_CALL, "content": [{"type": "image"}]}],
        tools=[WEATHER_TOOL],
    ),
    _case(
        "consecutive_users_and_mid_system",
        [
            {"role": "user", "content": "one"},
            {"role": "user", "content": "two"},
            {"role": "system", "content": "Late system note."},
            {"role": "user", "content": "three"},
        ],
    ),
    _case(
        "unicode_content",
        [
            {"role": "system", "content": "Réponds en français 🇫🇷."},
            {"role": "user", "content": "日本語で答えて。 Ñandú? 👩‍👩‍👧 \u200b"},
            {"role": "assistant", "tool_calls": [_call("u1", "calculate", {"expression": "√2 ≈ 1.414"})]},
            _tool("u1", "«ok»"),
        ],
        tools=[CALCULATOR_TOOL],
    ),
    _case(
        "control_strings_in_user_text",
        [{"role": "user", "content": 'Explain <|turn> and <|"|> tokens.'}],
        enable_thinking=False,
    ),
]

# Names must stay unique so test ids are stable.
assert len({case["name"] for case in CHAT_CORPUS}) == len(CHAT_CORPUS)


def corpus_case(name: str) -> dict:
    """A deep copy of one corpus case (callers may mutate it)."""
    return copy.deepcopy(next(case for case in CHAT_CORPUS if case["name"] == name))
