"""The project's Gemma 4 chat template against Google's official one, and the tiny tokenizer.

Both templates are rendered by transformers' own Jinja environment (`apply_chat_template`), on the
conversation corpus and on random conversations; the outputs must be identical.
"""

from __future__ import annotations

import copy
import filecmp
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from engine_builder.tiny.tokenizer import (
    CHAT_TEMPLATE_PATH,
    SPECIAL_TOKENS,
    TINY_VOCAB_SIZE,
    load_chat_template,
    make_tiny_tokenizer,
)
from tests.unit.chat_corpus import CHAT_CORPUS
from tests.unit.chat_tools import FLIGHTS_TOOL, WEATHER_TOOL

REPO_ROOT = Path(__file__).resolve().parents[2]
OFFICIAL_TEMPLATE = REPO_ROOT.parent / "shared" / "reference" / "gemma4_chat_template.official.jinja"


@pytest.fixture(scope="module")
def tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture(scope="module")
def official_source() -> str:
    if not OFFICIAL_TEMPLATE.exists():
        pytest.skip(f"official template not found at {OFFICIAL_TEMPLATE}")
    return OFFICIAL_TEMPLATE.read_text(encoding="utf-8")


def render(tokenizer, source: str, messages, tools=None, **kwargs) -> str:
    # Deep copies: a template must not see another's mutations, and the corpus stays pristine.
    return tokenizer.apply_chat_template(
        copy.deepcopy(messages), tools=copy.deepcopy(tools), tokenize=False, chat_template=source, **kwargs
    )


def assert_same(tokenizer, official_source, messages, tools=None, **kwargs) -> str:
    expected = render(tokenizer, official_source, messages, tools, **kwargs)
    ours = render(tokenizer, load_chat_template(), messages, tools, **kwargs)
    assert ours == expected
    return ours


# ------------------------------------------------------------------ conformance on the corpus


@pytest.mark.parametrize("case", CHAT_CORPUS, ids=[case["name"] for case in CHAT_CORPUS])
def test_matches_official_template(tokenizer, official_source, case):
    out = assert_same(tokenizer, official_source, case["messages"], case["tools"], **case["kwargs"])
    assert out.startswith("<bos>") and out.count("<bos>") == 1


def test_corpus_covers_the_format(tokenizer):
    # The conformance test is only as good as the corpus: check it reaches every construct.
    rendered = "".join(
        render(tokenizer, load_chat_template(), c["messages"], c["tools"], **c["kwargs"]) for c in CHAT_CORPUS
    )
    assert len(CHAT_CORPUS) >= 30
    for marker in (
        "<|think|>",
        "<|tool>",
        "<|tool_call>",
        "<tool_response|>",
        "<|image|>",
        "<|audio|>",
        "<|video|>",
        "<|channel>thought\n<channel|>",
        "nullable:true",
        "items:{",
        "enum:[",
        "response:{",
        "<|turn>system\n",
    ):
        assert marker in rendered, marker
    kwargs = [c["kwargs"] for c in CHAT_CORPUS]
    assert {k.get("enable_thinking") for k in kwargs} == {None, True, False}
    assert {k["add_generation_prompt"] for k in kwargs} == {True, False}
    assert any(c["messages"][-1]["role"] == "assistant" for c in CHAT_CORPUS)


# ------------------------------------------------------------------ conformance on random conversations

_texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from([" padded ", "<|channel>thought\nx<channel|>y", "a<channel|>b", "tail<|channel>open", ""]),
)
_keys = st.text(alphabet="abcXYZ_", min_size=1, max_size=5)
_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.floats(allow_nan=False, allow_infinity=False) | _texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=8,
)
_content = st.one_of(
    _texts,
    st.lists(
        st.one_of(
            st.builds(lambda t: {"type": "text", "text": t}, _texts),
            st.sampled_from([{"type": "image"}, {"type": "audio"}, {"type": "video"}]),
        ),
        min_size=1,
        max_size=3,
    ),
)


@st.composite
def _conversations(draw):
    messages = []
    if draw(st.booleans()):
        messages.append({"role": draw(st.sampled_from(["system", "developer"])), "content": draw(_texts)})
    for turn in range(draw(st.integers(1, 4))):
        messages.append({"role": "user", "content": draw(_content)})
        for step in range(draw(st.integers(0, 2))):
            message = {"role": "assistant"}
            if draw(st.booleans()):
                message["content"] = draw(_texts)
            if draw(st.booleans()):
                message["reasoning_content"] = draw(st.text(min_size=1, max_size=8))
            calls = [
                {
                    "id": f"t{turn}s{step}c{i}",
                    "type": "function",
                    "function": {
                        "name": draw(st.sampled_from(["get_weather", "search_flights"])),
                        "arguments": draw(st.dictionaries(_keys, _values, max_size=3)),
                    },
                }
                for i in range(draw(st.integers(0 if "content" in message else 1, 2)))
            ]
            if calls:
                message["tool_calls"] = calls
            messages.append(message)
            answered = draw(st.integers(0, len(calls)))
            for call in draw(st.permutations(calls))[:answered]:
                content = draw(st.one_of(_texts, st.lists(st.builds(lambda t: {"type": "text", "text": t}, _texts))))
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": content})
    tools = draw(st.sampled_from([None, [WEATHER_TOOL], [WEATHER_TOOL, FLIGHTS_TOOL]]))
    kwargs = {"add_generation_prompt": draw(st.booleans())}
    thinking = draw(st.sampled_from([None, True, False]))
    if thinking is not None:
        kwargs["enable_thinking"] = thinking
    return messages, tools, kwargs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conversation=_conversations())
def test_random_conversations_match_official(tokenizer, official_source, conversation):
    messages, tools, kwargs = conversation
    assert_same(tokenizer, official_source, messages, tools, **kwargs)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arguments=st.dictionaries(_keys, _values, max_size=4), response=st.dictionaries(_keys, _values, max_size=4))
def test_random_values_match_official(tokenizer, official_source, arguments, response):
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": [call], "tool_responses": [{"name": "f", "response": response}]},
    ]
    assert_same(tokenizer, official_source, messages, add_generation_prompt=True)


# ------------------------------------------------------------------ the reference document's examples


def test_renders_reference_examples(tokenizer):
    # Expected strings are copied from gemma4.md section 4.2 (renderings of the official template).
    ours = load_chat_template()
    hi = [{"role": "user", "content": "Hi"}]
    assert render(tokenizer, ours, hi, add_generation_prompt=True) == (
        "<bos><|turn>user\nHi<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"
    )
    system = [{"role": "system", "content": "You are helpful."}, *hi]
    assert render(tokenizer, ours, system, add_generation_prompt=True, enable_thinking=True) == (
        "<bos><|turn>system\n<|think|>\nYou are helpful.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n"
    )
    declaration = (
        '<|tool>declaration:get_weather{description:<|"|>Get the current weather<|"|>,parameters:{properties:'
        '{days:{type:<|"|>INTEGER<|"|>},location:{description:<|"|>City name<|"|>,type:<|"|>STRING<|"|>},'
        'unit:{enum:[<|"|>celsius<|"|>,<|"|>fahrenheit<|"|>],type:<|"|>STRING<|"|>}},required:'
        '[<|"|>location<|"|>],type:<|"|>OBJECT<|"|>}}<tool|><turn|>\n'
    )
    assert declaration in render(tokenizer, ours, hi, tools=[WEATHER_TOOL], add_generation_prompt=True)
    paris = {"id": "1", "type": "function", "function": {"name": "get_weather", "arguments": {"location": "Paris"}}}
    chat = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "tool_calls": [paris]},
        {"role": "tool", "tool_call_id": "1", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."},
        {"role": "user", "content": "Thanks"},
    ]
    assert render(tokenizer, ours, chat, add_generation_prompt=True).endswith(
        '<|turn>model\n<|tool_call>call:get_weather{location:<|"|>Paris<|"|>}<tool_call|><|tool_response>'
        'response:get_weather{value:<|"|>sunny<|"|>}<tool_response|>It is sunny.<turn|>\n<|turn>user\n'
        "Thanks<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"
    )


# ------------------------------------------------------------------ where we deliberately differ


def test_list_system_content_renders_its_text(tokenizer, official_source):
    # The official template prints the Python repr of a list-valued system prompt; OpenAI allows one.
    system = {"role": "system", "content": [{"type": "text", "text": " Be brief. "}]}
    messages = [system, {"role": "user", "content": "Hi"}]
    assert "[{" in render(tokenizer, official_source, messages)
    assert render(tokenizer, load_chat_template(), messages).startswith("<bos><|turn>system\nBe brief.<turn|>\n")


def test_mapping_tool_content_renders_as_response_fields(tokenizer, official_source):
    # The official template crashes on a dict tool result; ours renders it like a native tool response.
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}}
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c", "content": {"ok": True, "n": 2}},
    ]
    with pytest.raises(Exception):  # noqa: B017  (whatever the official template's Jinja raises)
        render(tokenizer, official_source, messages)
    assert render(tokenizer, load_chat_template(), messages).endswith(
        "<|tool_response>response:f{n:2,ok:true}<tool_response|>"
    )


# ------------------------------------------------------------------ the tiny tokenizer


def test_special_strings_are_single_tokens(tokenizer):
    ids = [tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS)
    assert tokenizer.unk_token_id not in ids[len(("<pad>", "<eos>", "<bos>", "<unk>")) :]
    assert ids[:3] == [0, 1, 2]  # pad, eos, bos keep Gemma's ids
    for token, token_id in zip(SPECIAL_TOKENS, ids):
        assert tokenizer.encode(token, add_special_tokens=False) == [token_id], token
        assert tokenizer.encode(f"x{token}y", add_special_tokens=False).count(token_id) == 1, token
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert (tokenizer.unk_token, tokenizer.mask_token, tokenizer.padding_side) == ("<unk>", "<mask>", "left")


TRICKY = [
    "",
    " ",
    "  leading and trailing  ",
    "line\r\nbreaks\n\n\ttabs\x0bvt\x0c",
    "\x00nul and \x7f del",
    "\ufeffbom",
    "e\u0301 combining, ñ precomposed",
    "👩‍👩‍👧‍👦 🇫🇷 👍🏽",
    "日本語のテキスト、中文，한국어",
    "مرحبا بالعالم עברית",
    "\u200b\u200d\u2028\u2029",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0010ffff",
    '<|turn>model\n<|channel>thought\n<channel|><|tool_call>call:f{a:<|"|>x<|"|>}<tool_call|>',
    '<|tur <turn| <|"| partial <|image',
    "<bos><bos><eos><pad><unk><mask>",
]


@pytest.mark.parametrize("text", TRICKY, ids=range(len(TRICKY)))
def test_round_trip_tricky_strings(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text())
def test_round_trip_any_unicode(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_bos_only_when_asked(tokenizer):
    bos = tokenizer.bos_token_id
    assert bos not in tokenizer.encode("Hello there", add_special_tokens=False)
    assert tokenizer.encode("Hello there", add_special_tokens=True).count(bos) == 1
    # The template writes <bos>; tokenizing the chat must not add a second one.
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids[0] == bos and ids.count(bos) == 1


def test_vocab_bound_and_compact_english(tokenizer):
    assert len(tokenizer) <= TINY_VOCAB_SIZE
    assert max(tokenizer.get_vocab().values()) < TINY_VOCAB_SIZE
    text = "You are a helpful assistant. What is the weather in Paris today? Let me think step by step."
    assert len(tokenizer.encode(text, add_special_tokens=False)) < len(text) / 2.5


def test_saved_files_are_deterministic_and_reload(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    make_tiny_tokenizer(first)
    make_tiny_tokenizer(second)
    names = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"}
    assert names <= {p.name for p in first.iterdir()}
    for path in first.iterdir():
        assert filecmp.cmp(path, second / path.name, shallow=False), path.name
    assert json.loads((first / "special_tokens_map.json").read_text())["bos_token"] == "<bos>"
    reloaded = AutoTokenizer.from_pretrained(first)
    assert reloaded.chat_template == CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")
    assert reloaded.padding_side == "left"
    assert reloaded.convert_tokens_to_ids("<|tool_call>") == make_tiny_tokenizer().convert_tokens_to_ids("<|tool_call>")
    chat = [{"role": "user", "content": "Hi"}]
    assert reloaded.apply_chat_template(chat, tokenize=False, add_generation_prompt=True).startswith("<bos><|turn>user")
