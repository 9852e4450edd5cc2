"""The e2e chat suite's core cases through `python -m server --tensor-parallel-size 2 --enable-expert-parallel`
(what `make serve SERVER_ARGS=...` runs; gloo on the CPU), asked through the openai SDK: at temperature 0 the
two ranks answer token for token as one process serving the same engine does.

The tiny random MoE engine (with its vision tower) serves: its output has no sense, so each case asks for
a few tokens and checks identity only (text, tool calls, reasoning, finish reason, token count, and the
sampled tokens where logprobs are asked). The single-process server runs in this process (uvicorn on a
thread) with the settings the command line gives, so only the tensor-parallel split differs."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from PIL import Image

from bench.uvicorn_thread import UvicornThread
from tests.parallel.server_process import TP_ARGS, Server

MAX_TOKENS = 6
NO_EOS = {"ignore_eos": True}  # a random engine may pick its stop token at once: every case makes its tokens
HELLO = [{"role": "user", "content": "Hello there, how are you?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
STREAM_PROMPTS = [f"Tell me about the number {i}, please." for i in range(6)]


@pytest.fixture(scope="module")
def tp_client(random_tiny_engine_dir, tmp_path_factory):
    srv = Server(random_tiny_engine_dir, tmp_path_factory.mktemp("tp-chat") / "server.log", TP_ARGS)
    try:
        assert len(srv.workers) == 1  # the answers below do come from two ranks
        yield srv.client()
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def single_client(random_tiny_engine_dir):
    """The same engine in one process, configured from the same command line less the parallel flags."""
    from server.__main__ import parse_args, runtime_config_from_args, settings_from_args
    from server.app import create_app
    from server.backend import EmbeddedBackend

    args = parse_args(["--engine", str(random_tiny_engine_dir), "--device", "cpu"])
    config = runtime_config_from_args(args)
    assert config.tensor_parallel_size == 1
    backend = EmbeddedBackend.from_engine_dir(random_tiny_engine_dir, config)
    with UvicornThread(create_app(settings_from_args(args), backend)) as main:
        yield openai.OpenAI(base_url=main.base_url + "/v1", api_key="not-used", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model(tp_client, single_client) -> str:
    name = tp_client.models.list().data[0].id
    assert single_client.models.list().data[0].id == name
    return name


def _png_data_url() -> str:
    # two colours, so the vision tower's soft tokens are not all alike
    img = Image.new("RGB", (64, 48), (200, 30, 30))
    img.paste((20, 40, 220), (32, 0, 64, 48))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _chat(client: openai.OpenAI, model: str, **kwargs) -> dict:
    """What a chat completion said, without its ids and times; the sampled tokens come with logprobs."""
    kwargs.setdefault("max_tokens", MAX_TOKENS)
    out = client.chat.completions.create(model=model, temperature=0, logprobs=True, **kwargs)
    choice, msg = out.choices[0], out.choices[0].message
    return {
        "content": msg.content,
        "reasoning": (msg.model_extra or {}).get("reasoning"),
        "tool_calls": [(c.function.name, c.function.arguments) for c in msg.tool_calls or ()],
        "finish_reason": choice.finish_reason,
        "usage": (out.usage.prompt_tokens, out.usage.completion_tokens),
        "tokens": [t.token for t in choice.logprobs.content],
    }


def _stream(client: openai.OpenAI, model: str, content: str) -> dict:
    """A streamed chat's text, finish reason and tokens (one logprobs entry per token)."""
    chunks = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        logprobs=True,
        extra_body=NO_EOS,
    )
    text, tokens, finish = "", [], None
    for chunk in chunks:
        for c in chunk.choices:
            text += c.delta.content or ""
            tokens += [t.token for t in (c.logprobs.content if c.logprobs else None) or ()]
            finish = c.finish_reason or finish
    return {"content": text, "tokens": tokens, "finish_reason": finish}


def _both(tp_client, single_client, ask) -> tuple:
    """`ask(client)` on the TP=2 server and on the single process."""
    return ask(tp_client), ask(single_client)


def test_plain_chat_non_stream_and_stream(tp_client, single_client, model):
    tp, one = _both(tp_client, single_client, lambda c: _chat(c, model, messages=HELLO, extra_body=NO_EOS))
    assert tp == one and len(tp["tokens"]) == MAX_TOKENS
    tp_s, one_s = _both(tp_client, single_client, lambda c: _stream(c, model, HELLO[0]["content"]))
    assert tp_s == one_s and len(tp_s["tokens"]) == MAX_TOKENS
    assert tp_s["content"] == tp["content"]  # and streaming says what the whole answer says


def test_text_completion(tp_client, single_client, model):
    def ask(client):
        out = client.completions.create(
            model=model,
            prompt="The quick brown fox",
            max_tokens=MAX_TOKENS,
            temperature=0,
            logprobs=2,
            extra_body=NO_EOS,
        )
        return out.choices[0].text, out.choices[0].logprobs.tokens, out.choices[0].finish_reason

    tp, one = _both(tp_client, single_client, ask)
    assert tp == one and len(tp[1]) == MAX_TOKENS


def test_tools_with_tool_choice_required(tp_client, single_client, model):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    # the grammar forces a call; 40 tokens let the random engine close it (and the parser read it)
    tp, one = _both(
        tp_client,
        single_client,
        lambda c: _chat(c, model, messages=messages, tools=[WEATHER_TOOL], tool_choice="required", max_tokens=40),
    )
    assert tp == one and [name for name, _ in tp["tool_calls"]] == ["get_weather"]


def test_reasoning_with_enable_thinking(tp_client, single_client, model):
    thinking = {**NO_EOS, "chat_template_kwargs": {"enable_thinking": True}}
    tp, one = _both(tp_client, single_client, lambda c: _chat(c, model, messages=HELLO, extra_body=thinking))
    assert tp == one and len(tp["tokens"]) == MAX_TOKENS
    plain = _chat(single_client, model, messages=HELLO, extra_body=NO_EOS)
    assert tp["usage"][0] != plain["usage"][0]  # the template did render the thinking turn


def test_an_image(tp_client, single_client, model):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": _png_data_url()}},
            ],
        }
    ]
    tp, one = _both(tp_client, single_client, lambda c: _chat(c, model, messages=messages, extra_body=NO_EOS))
    assert tp == one and len(tp["tokens"]) == MAX_TOKENS
    text_only = _chat(single_client, model, messages=[{"role": "user", "content": "What is in this picture?"}])
    assert tp["usage"][0] > text_only["usage"][0]  # the image's soft tokens were in the prompt


def test_logprobs_agree(tp_client, single_client, model):
    def ask(client):
        out = client.chat.completions.create(
            model=model,
            messages=HELLO,
            max_tokens=MAX_TOKENS,
            temperature=0,
            logprobs=True,
            top_logprobs=3,
            extra_body=NO_EOS,
        )
        return out.choices[0].logprobs.content

    tp, one = _both(tp_client, single_client, ask)
    assert [t.token for t in tp] == [t.token for t in one] and len(tp) == MAX_TOKENS
    for a, b in zip(tp, one, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        # the alternatives sorted by (text, bytes): the order of two near-equal ones is not what is compared,
        # and several byte-fallback tokens share the text "\ufffd"
        alts_a, alts_b = (sorted((t.token, tuple(t.bytes or ()), t.logprob) for t in x.top_logprobs) for x in (a, b))
        assert len(alts_a) == 3 and [x[:2] for x in alts_a] == [x[:2] for x in alts_b]
        assert [x[2] for x in alts_a] == pytest.approx([x[2] for x in alts_b], abs=1e-4)


def test_concurrent_streams_each_match_the_single_process(tp_client, single_client, model):
    alone = [_stream(single_client, model, p) for p in STREAM_PROMPTS]  # one at a time: no batch to share
    with ThreadPoolExecutor(len(STREAM_PROMPTS)) as pool:
        together = list(pool.map(lambda p: _stream(tp_client, model, p), STREAM_PROMPTS))
    assert together == alone
    assert all(len(a["tokens"]) == MAX_TOKENS for a in alone)
    assert len({a["content"] for a in alone}) > 1  # the prompts do differ: each stream is told apart
