"""Responses input items -> chat messages, the response store's bounds, and reasoning token counting."""

from __future__ import annotations

import pytest

from server.errors import APIError
from server.responses.items import normalize_input, to_chat_messages
from server.responses.reasoning_tokens import ReasoningTokenCounter
from server.responses.store import ResponseStore, StoreConfig

try:
    from ._server_fakes import tiny_tokenizer
except ImportError:
    from _server_fakes import tiny_tokenizer


def test_items_fold_into_chat_turns():
    items = [
        {"role": "developer", "content": "Answer in French."},
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Look:"},
                {"type": "input_image", "image_url": "data:image/png;base64,AA=="},
            ],
        },
        {"type": "reasoning", "id": "rs", "summary": [{"type": "summary_text", "text": "think"}]},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Un carré.", "annotations": []}],
        },
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "ok"}]},
    ]
    messages = to_chat_messages(items, "Be brief.")
    assert messages == [
        {"role": "system", "content": "Be brief.\n\nAnswer in French."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look:"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA==", "detail": None}},
            ],
        },
        {
            "role": "assistant",
            "content": "Un carré.",
            "reasoning": "think",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]
    assert to_chat_messages(normalize_input("Hi"), None) == [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    "item, param",
    [
        ({"role": "tool", "content": "x"}, "input.0.role"),
        ({"type": "function_call", "name": "f", "arguments": "{}"}, "input.0.call_id"),
        ({"role": "assistant", "content": [{"type": "input_image", "image_url": "http://x"}]}, "input.0.content.0"),
        ({"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}, "input.0.content.0"),
    ],
)
def test_bad_items_name_their_place(item, param):
    with pytest.raises(APIError) as e:
        to_chat_messages([item], None)
    assert e.value.status_code == 400 and e.value.param == param


def test_store_bounds_count_and_age():
    now = [0.0]
    store = ResponseStore(StoreConfig(max_entries=2, ttl_s=10.0), clock=lambda: now[0])
    for i in range(3):
        store.put({"id": f"r{i}", "output": [{"type": "message"}]}, [{"role": "user", "content": str(i)}])
    assert store.get("r0") is None and len(store) == 2  # the oldest went first
    assert store.get("r1").conversation == ({"role": "user", "content": "1"}, {"type": "message"})
    now[0] = 10.0
    assert store.get("r1") is None and len(store) == 0  # expired
    off = ResponseStore(StoreConfig(max_entries=0))
    off.put({"id": "x", "output": []}, [])
    assert off.get("x") is None and len(off) == 0


def test_reasoning_tokens_counted_inside_the_channel():
    tok = tiny_tokenizer()
    ids = tok.encode("<|channel>thought\nabc<channel|>done", add_special_tokens=False)
    counter = ReasoningTokenCounter(tok)
    counter.add(ids)
    tail = tok.encode("done", add_special_tokens=False)
    assert counter.count == len(ids) - len(tail) > 2
    open_prompt = ReasoningTokenCounter(tok, starts_in_reasoning=True)
    open_prompt.add(tok.encode("abc<channel|>", add_special_tokens=False))
    assert open_prompt.count == len(tok.encode("abc<channel|>", add_special_tokens=False))
