"""Role rules of the NIM and the templating of chat history (tool calls, tool results, images)
through the project's real chat template and tiny tokenizer."""

from __future__ import annotations

import pytest

from server.chat_template import render_prompt, to_template_messages, validate_roles
from server.errors import APIError
from server.protocol import ChatCompletionRequest, ChatMessage

try:
    from ._server_fakes import tiny_tokenizer
except ImportError:
    from _server_fakes import tiny_tokenizer

CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'},
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]


def msgs(*items) -> list[ChatMessage]:
    return [ChatMessage(**m) for m in items]


U = {"role": "user", "content": "hi"}
A = {"role": "assistant", "content": "hello"}
S = {"role": "system", "content": "be brief"}
AC = {"role": "assistant", "content": None, "tool_calls": [CALL]}
T = {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}

VALID = [
    [U],
    [S, U],
    [{"role": "developer", "content": "x"}, U],
    [U, A, U],
    [S, U, A, U, A, U],
    [U, AC, T],
    [U, AC, T, T],
    [U, AC, T, A, U],
    [U, AC, T, AC, T],
]
INVALID = [
    ([A, U], "first message"),
    ([S], "user message"),
    ([U, U], "two user messages"),
    ([U, A], "last message must have role 'user'"),
    ([U, A, A, U], "two assistant messages"),
    ([U, T], "must follow an assistant message with tool_calls"),
    ([U, A, T], "must follow an assistant message with tool_calls"),
    ([U, S, U], "only allowed as the first message"),
    ([U, AC, {"role": "tool", "tool_call_id": "call_9", "content": "x"}], "matches no call"),
]


@pytest.mark.parametrize("messages", VALID)
def test_valid_role_sequences(messages):
    validate_roles(msgs(*messages))


@pytest.mark.parametrize("messages,why", INVALID)
def test_invalid_role_sequences_are_400(messages, why):
    with pytest.raises(APIError) as e:
        validate_roles(msgs(*messages))
    assert e.value.status_code == 400
    assert why in e.value.message


def test_continue_final_message_needs_assistant_last():
    validate_roles(msgs(U, A), continue_final_message=True)
    with pytest.raises(APIError):
        validate_roles(msgs(U), continue_final_message=True)


def render(**body) -> str:
    return render_prompt(tiny_tokenizer(), ChatCompletionRequest(**body)).text


def test_plain_prompt_prefills_an_empty_thought_channel():
    assert render(messages=[U]) == "<bos><|turn>user\nhi<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"


def test_enable_thinking_puts_think_token_in_system_turn():
    text = render(messages=[S, U], chat_template_kwargs={"enable_thinking": True})
    assert text.startswith("<bos><|turn>system\n<|think|>\nbe brief<turn|>")
    assert text.endswith("<|turn>model\n")  # no pre-filled empty channel: the model thinks
    assert render(messages=[U], reasoning_effort="high").endswith("<|turn>model\n")
    assert render(messages=[U], reasoning_effort="none").endswith("<channel|>")


def test_tool_call_arguments_string_becomes_gemma_object():
    text = render(messages=[U, AC, T], tools=TOOLS)
    # json.loads before templating: Gemma syntax, not the client's JSON pasted raw
    assert '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:2}<tool_call|>' in text
    assert '{"city"' not in text
    assert '<|tool_response>response:get_weather{value:<|"|>sunny<|"|>}<tool_response|>' in text
    assert "<|tool>declaration:get_weather{" in text
    assert text.endswith("<tool_response|>")  # after tool results the model continues its turn


def test_tool_content_parts_and_dict_arguments():
    tool = {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": [{"type": "text", "text": "sun"}, {"type": "text", "text": "ny"}],
    }
    call = {**CALL, "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    text = render(messages=[U, {"role": "assistant", "tool_calls": [call]}, tool], tools=TOOLS)
    assert 'call:get_weather{city:<|"|>Paris<|"|>}' in text and 'value:<|"|>sunny<|"|>' in text


def test_bad_arguments_json_is_400():
    bad = {**CALL, "function": {"name": "get_weather", "arguments": "{not json"}}
    with pytest.raises(APIError) as e:
        render(messages=[U, {"role": "assistant", "tool_calls": [bad]}, T], tools=TOOLS)
    assert e.value.status_code == 400 and e.value.param == "messages.1.tool_calls.0.function.arguments"


def test_tool_choice_none_hides_tools():
    assert "<|tool>" not in render(messages=[U], tools=TOOLS, tool_choice="none")
    assert "<|tool>" in render(messages=[U], tools=TOOLS, tool_choice="auto")


def test_images_become_placeholders_in_order():
    parts = [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": "http://a/1.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    rendered = render_prompt(tiny_tokenizer(), ChatCompletionRequest(messages=[{"role": "user", "content": parts}]))
    assert "<|turn>user\nCompare<|image|><|image|><turn|>" in rendered.text
    assert rendered.image_urls == ("http://a/1.png", "data:image/png;base64,AAAA")


def test_images_outside_user_messages_are_400():
    with pytest.raises(APIError):
        to_template_messages(
            msgs(U, {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "http://a"}}]})
        )


def test_continue_final_message_ends_in_the_partial_answer():
    text = render(
        messages=[U, {"role": "assistant", "content": "The answer is"}],
        add_generation_prompt=False,
        continue_final_message=True,
    )
    assert text.endswith("<|turn>model\nThe answer is")


def test_history_reasoning_content_is_accepted_as_reasoning():
    call_msg = {"role": "assistant", "tool_calls": [CALL], "reasoning_content": "I should look it up"}
    text = render(messages=[U, call_msg, T], tools=TOOLS)
    assert "<|channel>thought\nI should look it up\n<channel|><|tool_call>" in text
