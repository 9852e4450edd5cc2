"""The gemma4 model behind the session's tritonserver against the runtime run in this process (tiny
engine): tritonclient's gRPC ModelStreamInfer, HTTP generate_stream SSE and its bad requests, and the
translator's client (triton_bridge.client) with logprobs and stops, images, bad requests and many
concurrent streams: same tokens, same text deltas, same finish reasons and usage."""

from __future__ import annotations

import asyncio
import json
import queue

import httpx
import numpy as np
import pytest

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")

from gemma_runtime.api import GenerateRequest, RequestError, SamplingParams  # noqa: E402
from tests.e2e.triton_support import PROMPTS, _collect, _png, _summary, session_loop  # noqa: E402
from triton_bridge import protocol  # noqa: E402
from triton_bridge.client import numpy_inputs_to_grpc  # noqa: E402


@session_loop
async def test_grpc_model_stream_infer_with_tritonclient(triton, embedded):
    """The plain tritonclient streaming API, as a Triton user writes it."""
    request = GenerateRequest("g1", PROMPTS[0], SamplingParams(max_tokens=8, ignore_eos=True))
    expected = await _collect(embedded.generate(request))
    responses: queue.Queue = queue.Queue()
    client = tritonclient_grpc.InferenceServerClient(triton.server.grpc_url)
    client.start_stream(callback=lambda result, error: responses.put(error or result))
    try:
        client.async_stream_infer("gemma4", numpy_inputs_to_grpc(protocol.encode_request(request)), request_id="g1")
        outs = []
        while not outs or not outs[-1].finished:
            result = responses.get(timeout=30)
            assert not isinstance(result, Exception), result
            final = result.get_response().parameters["triton_final_response"].bool_param
            assert result.get_response().id == "g1"
            outs.append(protocol.decode_output("g1", result.as_numpy, final))
    finally:
        client.stop_stream()
        client.close()
    assert len(outs) == 8 and [o.finished for o in outs] == [False] * 7 + [True]
    assert _summary(outs) == _summary(expected)
    assert outs[-1].finish_reason == "length" and outs[-1].usage.completion_tokens == 8


@session_loop
async def test_http_generate_stream_sse(triton, embedded):
    expected = await _collect(
        embedded.generate(GenerateRequest("h1", PROMPTS[1], SamplingParams(max_tokens=6, ignore_eos=True)))
    )
    events = []
    async with httpx.AsyncClient(timeout=30) as http:
        body = {"id": "h1", "text_input": PROMPTS[1], "max_tokens": 6, "ignore_eos": True}
        async with http.stream("POST", f"{triton.server.http_url}/v2/models/gemma4/generate_stream", json=body) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[len("data: ") :]))
    assert all("error" not in e for e in events)
    # generate_stream renders a one-element array as a scalar
    ids = [tuple(np.atleast_1d(e["output_ids"]).tolist()) for e in events]
    assert ids == [o.token_ids for o in expected]
    assert "".join(e["text_output"] for e in events) == "".join(o.text for o in expected)
    assert [e["finish_reason"] for e in events] == [""] * (len(events) - 1) + ["length"]
    assert (events[-1]["prompt_tokens"], events[-1]["completion_tokens"]) == (expected[-1].usage.prompt_tokens, 6)


@session_loop
async def test_http_generate_stream_reports_bad_requests(triton):
    async with httpx.AsyncClient(timeout=30) as http:
        url = f"{triton.server.http_url}/v2/models/gemma4/generate_stream"
        r = await http.post(url, json={"text_input": "hi", "max_tokens": 0})
        assert json.loads(r.text.strip()[len("data: ") :]) == {
            "error": "invalid request: max_tokens must be at least 1"
        }
        r = await http.post(url, json={"max_tokens": 3})
        assert "exactly one of text_input" in r.text


@session_loop
async def test_backend_matches_embedded_with_logprobs_and_stops(triton, embedded):
    for i, sampling in enumerate(
        [
            SamplingParams(max_tokens=5, logprobs=3),
            SamplingParams(max_tokens=12, stop=(" as",), temperature=0.8, seed=7),
            SamplingParams(max_tokens=4, top_k=3, temperature=1.0, seed=1, stop_token_ids=(349,)),
        ]
    ):
        request = GenerateRequest(
            f"lp{i}", [2] + embedded.tokenizer.encode(PROMPTS[0], add_special_tokens=False), sampling
        )
        expected = await _collect(embedded.generate(request))
        got = await _collect(triton.backend.generate(request))
        assert _summary(got) == _summary(expected)
        if sampling.logprobs:
            for g, e in zip(got, expected):
                assert [(t.token_id, [x for x, _ in t.top]) for t in g.logprobs] == [
                    (t.token_id, [x for x, _ in t.top]) for t in e.logprobs
                ]
                np.testing.assert_allclose([t.logprob for t in g.logprobs], [t.logprob for t in e.logprobs], rtol=1e-5)


@session_loop
async def test_backend_images_match_embedded(triton, embedded):
    prompt = "<|turn>user\nWhat is in <|image|> and <|image|>?<turn|>\n<|turn>model\n"
    request = GenerateRequest(
        "img", prompt, SamplingParams(max_tokens=5), images=(_png(1), _png(2)), image_max_soft_tokens=70
    )
    expected = await _collect(embedded.generate(request))
    assert _summary(await _collect(triton.backend.generate(request))) == _summary(expected)
    assert expected[-1].usage.prompt_tokens > 140  # the soft tokens were counted, so the images went through


@session_loop
async def test_backend_bad_requests_raise_request_error(triton):
    with pytest.raises(RequestError, match="image placeholders"):
        await _collect(triton.backend.generate(GenerateRequest("bad1", "no placeholder", images=(_png(3),))))
    with pytest.raises(RequestError, match="cannot decode image"):
        await _collect(triton.backend.generate(GenerateRequest("bad2", "<|image|>", images=(b"not an image",))))
    long_prompt = [5] * (triton.backend.max_model_len + 8)
    with pytest.raises(RequestError):
        await _collect(triton.backend.generate(GenerateRequest("bad3", long_prompt)))


@session_loop
async def test_many_concurrent_streams(triton, embedded):
    # prefix caching: both engines see every prompt first, so each request's cached tokens (in usage) do
    # not depend on how the concurrent requests happen to arrive
    for i, prompt in enumerate(PROMPTS):
        warm = GenerateRequest(f"warm{i}", prompt, SamplingParams(max_tokens=1))
        await _collect(embedded.generate(warm))
        await _collect(triton.backend.generate(warm))
    requests = [
        GenerateRequest(f"c{i}", PROMPTS[i % len(PROMPTS)], SamplingParams(max_tokens=4 + i % 9, ignore_eos=True))
        for i in range(32)
    ]
    expected = await asyncio.gather(*[_collect(embedded.generate(r)) for r in requests])
    got = await asyncio.gather(*[_collect(triton.backend.generate(r)) for r in requests])
    for r, g, e in zip(requests, got, expected):
        assert [o.token_ids for o in g] == [o.token_ids for o in e], r.request_id
        assert g[-1].usage == e[-1].usage and g[-1].finish_reason == "length"
