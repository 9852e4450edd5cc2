"""Speculative decoding seen by users: a server started with `--speculative ngram` or `--speculative mtp`
(embedded, and a real tritonserver whose config.pbtxt sets `speculative`) answers the openai SDK,
streaming and not, exactly as a server without it does (greedy: token for token), and its /metrics show
the spec_decode counters move. The tiny random engine serves (its output needs no sense, only repetition
for prompt lookup to find); for `mtp` a copy of it carries a random drafter converted as
`ASSISTANT=random` does, whose drafts random weights next to never keep: the drafted counter moves, the
output must still be the target's own."""

from __future__ import annotations

from types import SimpleNamespace

import openai
import pytest

from bench.uvicorn_thread import UvicornThread
from gemma_runtime.config import RuntimeConfig
from server.__main__ import parse_args, runtime_config_from_args
from tests.e2e.conftest import RUNTIME, SEED_MODEL, free_ports
from tests.e2e.metrics_scrape import scrape, settled

MODEL = SEED_MODEL
QUESTIONS = ["red green blue " * 6, "one two three four " * 5, "abc abc abc abc abc abc"]


def _serve(backend, engine_dir):
    from server.app import create_app
    from server.settings import ServerSettings

    return create_app(ServerSettings(engine_dir=str(engine_dir), served_model_name=MODEL), backend)


@pytest.fixture(scope="module")
def plain_server(random_tiny_engine_dir):
    from server.backend import EmbeddedBackend

    backend = EmbeddedBackend.from_engine_dir(random_tiny_engine_dir, RuntimeConfig(**RUNTIME))
    with UvicornThread(_serve(backend, random_tiny_engine_dir)) as main:
        yield main.base_url


@pytest.fixture(scope="module")
def plain_answers(plain_server) -> list:
    return _answers(plain_server)


@pytest.fixture(
    scope="module",
    params=[("embedded", "ngram"), ("triton", "ngram"), ("embedded", "mtp"), ("triton", "mtp")],
    ids=lambda p: "-".join(p),
)
def spec_server(request, random_tiny_engine_dir, tmp_path_factory):
    kind, method = request.param
    engine_dir = request.getfixturevalue("random_tiny_mtp_engine_dir") if method == "mtp" else random_tiny_engine_dir
    triton = None
    if kind == "embedded":
        from server.backend import EmbeddedBackend

        args = parse_args(["--engine", str(engine_dir), "--device", "cpu", "--speculative", method])
        args.max_num_seqs = RUNTIME["max_num_seqs"]
        config = runtime_config_from_args(args)
        assert config.speculative == method
        backend = EmbeddedBackend.from_engine_dir(engine_dir, config)
    else:
        pytest.importorskip("tritonclient.grpc")
        from triton_bridge.client import TritonBackend
        from triton_bridge.launcher import TritonPorts, start_triton

        triton = start_triton(
            engine_dir,
            TritonPorts(*free_ports(3)),
            runtime_config=RUNTIME,
            model_params={"speculative": method, "num_speculative_tokens": "3"},
            log_path=tmp_path_factory.mktemp("triton-spec-log") / "tritonserver.log",
            timeout=300,
            record_engine_path=False,
        )
        backend = TritonBackend.from_uri(triton.backend_uri, engine_dir=engine_dir)
    try:
        with UvicornThread(_serve(backend, engine_dir)) as main:
            yield SimpleNamespace(base_url=main.base_url, method=method)
    finally:
        if triton is not None:
            triton.stop()


def _client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="not-used", max_retries=0, timeout=120)


def _answers(base_url: str) -> list:
    client, out = _client(base_url), []
    for q in QUESTIONS:
        messages = [{"role": "user", "content": q}]
        reply = client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=24, temperature=0, logprobs=True, top_logprobs=2
        )
        choice = reply.choices[0]
        logprobs = [(t.token, round(t.logprob, 3)) for t in choice.logprobs.content]
        stream = client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=24, temperature=0, stream=True
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        text = client.completions.create(model=MODEL, prompt=q, max_tokens=20, temperature=0).choices[0].text
        out.append(
            (choice.message.content, choice.finish_reason, reply.usage.completion_tokens, logprobs, streamed, text)
        )
    return out


def test_spec_server_answers_as_the_plain_one(plain_server, plain_answers, spec_server):
    assert _answers(spec_server.base_url) == plain_answers
    # ngram's drafts are kept on these prompts; the random drafter's are not (only drafted moves)
    moves = "accepted" if spec_server.method == "ngram" else "drafted"
    moving = f"gemma_spec_decode_{moves}_tokens"
    found = settled(spec_server.base_url, "gemma_spec_decode_", ready=lambda m: m.get(moving, 0) > 0)
    drafted = found["gemma_spec_decode_drafted_tokens"]
    accepted = found["gemma_spec_decode_accepted_tokens"]
    mean = found["gemma_spec_decode_mean_accepted_length"]
    if spec_server.method == "ngram":
        assert drafted >= accepted > 0
        assert mean > 1.0
    else:
        assert drafted > 0 and drafted >= accepted >= 0
        assert mean >= 1.0  # 1 + kept drafts per verifying sequence-step: verifies were counted
    assert scrape(plain_server, "gemma_spec_decode_")["gemma_spec_decode_drafted_tokens"] == 0
