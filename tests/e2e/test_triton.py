"""The gemma4 model behind a real tritonserver (started by the same code as `make triton`), tiny engine.

Triton's own protocols (gRPC ModelStreamInfer from tritonclient, HTTP generate_stream SSE) and the
translator's client (triton_bridge.client) are checked against the runtime run in this process:
same tokens, same text deltas, same finish reasons and usage. One tritonserver for the session.
"""

from __future__ import annotations

import asyncio
import io
import json
import queue
import time
import urllib.request
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")

# grpc.aio binds its completion queue to the first event loop it runs on: every async test here shares
# the session loop.
session_loop = pytest.mark.asyncio(loop_scope="session")

from gemma_runtime.api import GenerateRequest, RequestError, SamplingParams  # noqa: E402
from tests.e2e.conftest import RUNTIME, free_ports  # noqa: E402
from triton_bridge import protocol  # noqa: E402
from triton_bridge.client import TritonBackend, TritonUnavailable, numpy_inputs_to_grpc, parse_uri  # noqa: E402
from triton_bridge.launcher import DEFAULT_MODEL_REPO, TritonPorts, model_config_json, start_triton  # noqa: E402

PROMPTS = ["Hello world", "The quick brown fox", "<|turn>user\nWhat is two plus two?<turn|>\n<|turn>model\n",
           "a b c d e f g", "Once upon a time", "Tell me about Triton"]


@pytest.fixture(scope="session")
def engine_dir(taught_engine_dir):
    return taught_engine_dir


@pytest.fixture(scope="session")
def embedded(engine_dir):
    """The in-process runtime: the reference every Triton path must reproduce."""
    from gemma_runtime.config import RuntimeConfig
    from gemma_runtime.engine.async_engine import AsyncEngine

    engine = AsyncEngine.from_engine_dir(engine_dir, RuntimeConfig(**RUNTIME))
    engine.start()
    yield engine
    engine.shutdown()


@pytest.fixture(scope="session")
def triton(engine_dir, triton_server):
    """The session's tritonserver and a translator-side client made for it."""
    uri = triton_server.backend_uri
    backend = TritonBackend.from_uri(uri, engine_dir=engine_dir)
    backend.poll_interval = 0.1
    backend.start()
    yield SimpleNamespace(server=triton_server, backend=backend, uri=uri)
    backend.shutdown()


async def _collect(stream) -> list:
    return [out async for out in stream]


def _summary(outs) -> list[tuple]:
    return [(o.token_ids, o.text, o.finished, o.finish_reason, o.stop_reason, o.usage) for o in outs]


def _metrics(server) -> dict[str, float]:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as r:
        return protocol.parse_stats_metrics(r.read().decode())


def _wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _png(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# --- no server needed ---------------------------------------------------------------------------------

def test_config_pbtxt_declares_the_protocol_tensors():
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse((DEFAULT_MODEL_REPO / "gemma4" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    dtype = {"BYTES": "TYPE_STRING", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64", "FP32": "TYPE_FP32", "BOOL": "TYPE_BOOL"}
    declared_in = {t.name: (model_config_pb2.DataType.Name(t.data_type), tuple(t.dims), t.optional) for t in config.input}
    declared_out = {t.name: (model_config_pb2.DataType.Name(t.data_type), tuple(t.dims)) for t in config.output}
    assert declared_in == {s.name: (dtype[s.datatype], s.dims, True) for s in protocol.INPUTS}
    assert declared_out == {s.name: (dtype[s.datatype], s.dims) for s in protocol.OUTPUTS}
    assert config.backend == "python" and config.max_batch_size == 0
    assert config.model_transaction_policy.decoupled
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_MODEL]


def test_request_codec_round_trips_every_sampling_field():
    sampling = SamplingParams(max_tokens=7, temperature=0.5, top_p=0.9, top_k=5, min_p=0.1, seed=11,
                              presence_penalty=0.5, frequency_penalty=0.25, stop=("x", "yz"), stop_token_ids=(3, 4),
                              ignore_eos=True, include_stop_str_in_output=True, logprobs=2, skip_special_tokens=True,
                              min_tokens=2)
    request = GenerateRequest("r", "hi <|image|>", sampling, images=(b"\x89PNG..",), image_max_soft_tokens=70)
    tensors = protocol.encode_request(request)
    assert protocol.decode_request("r", tensors.get) == request
    ids = GenerateRequest("r", [5, 6, 7])
    assert protocol.decode_request("r", protocol.encode_request(ids).get) == ids
    with pytest.raises(ValueError, match="exactly one of text_input"):
        protocol.decode_request("r", {}.get)
    with pytest.raises(ValueError, match="max_tokens"):
        protocol.decode_request("r", {"text_input": np.array([b"x"], dtype=object), "max_tokens": np.array([0], dtype=np.int32)}.get)


def test_uri_and_ports():
    assert parse_uri("triton://h:9001") == ("h:9001", "gemma4", "http://h:9002/metrics")
    assert parse_uri("triton://h:9001/other?metrics_port=7") == ("h:9001", "other", "http://h:7/metrics")
    with pytest.raises(ValueError):
        parse_uri("http://h:1")
    assert TritonPorts.from_env({}) == TritonPorts(8010, 8011, 8012)
    assert TritonPorts.from_env({"TRITON_HTTP_PORT": "1", "TRITON_GRPC_PORT": "2", "TRITON_METRICS_PORT": "3"}) == TritonPorts(1, 2, 3)


def test_launcher_sets_the_engine_in_the_model_config(tmp_path):
    config = json.loads(model_config_json(tmp_path, DEFAULT_MODEL_REPO, {"max_num_seqs": 4}))
    assert config["parameters"]["engine_dir"]["stringValue"] == str(tmp_path)
    assert json.loads(config["parameters"]["runtime_config"]["stringValue"]) == {"max_num_seqs": 4}


# --- against the running server -----------------------------------------------------------------------

def test_health_and_stats_through_the_client(triton):
    _wait_for(triton.backend.health, what="backend health")
    # Earlier tests share this server: wait until whatever they left finishing is done, then every
    # page must be free again.
    stats = _wait_for(lambda: (s := triton.backend.stats()).kv_blocks_total and s.num_running == 0 and s, 30, "idle stats")
    assert stats.kv_blocks_free == stats.kv_blocks_total > 0 and stats.num_waiting == 0


def test_translator_survives_triton_going_down_and_coming_back(engine_dir, tmp_path):
    """The OpenAI translator in front of a Triton that is down, comes up, goes down, comes back on the
    same ports: not ready and 503 in the OpenAI envelope while down, service again when it is back,
    with the same translator process and client all along."""
    from bench.uvicorn_thread import UvicornThread
    from server.app import create_app
    from server.settings import ServerSettings

    ports = TritonPorts(*free_ports(3))
    backend = TritonBackend.from_uri(f"triton://127.0.0.1:{ports.grpc}?metrics_port={ports.metrics}", engine_dir=engine_dir)
    backend.poll_interval = 0.1
    app = create_app(ServerSettings(served_model_name="tiny"), backend)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 4}
    with UvicornThread(app) as http:
        def ready() -> int:
            return httpx.get(http.base_url + "/v1/health/ready", timeout=5).status_code

        def chat() -> httpx.Response:
            return httpx.post(http.base_url + "/v1/chat/completions", json=body, timeout=60)

        def down_checks() -> None:
            _wait_for(lambda: ready() == 503, 30, "not ready while Triton is down")
            r = chat()
            assert r.status_code == 503, r.text
            assert set(r.json()["error"]) >= {"message", "type", "param", "code"}

        down_checks()
        for round_ in range(2):
            server = start_triton(engine_dir, ports, runtime_config=RUNTIME, log_path=tmp_path / f"triton{round_}.log",
                                  timeout=300, record_engine_path=False)
            try:
                _wait_for(lambda: ready() == 200, 30, "ready once Triton is up")
                r = chat()
                assert r.status_code == 200, r.text
                assert r.json()["choices"][0]["message"]["role"] == "assistant"
            finally:
                server.stop()
            down_checks()


def test_engine_dir_is_discovered_from_the_model_config(triton, engine_dir):
    backend = TritonBackend.from_uri(triton.uri)
    try:
        assert backend.engine_dir == engine_dir.resolve()
        assert backend.spec.model_name == triton.backend.spec.model_name
    finally:
        backend.shutdown()


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
    expected = await _collect(embedded.generate(GenerateRequest("h1", PROMPTS[1], SamplingParams(max_tokens=6, ignore_eos=True))))
    events = []
    async with httpx.AsyncClient(timeout=30) as http:
        body = {"id": "h1", "text_input": PROMPTS[1], "max_tokens": 6, "ignore_eos": True}
        async with http.stream("POST", f"{triton.server.http_url}/v2/models/gemma4/generate_stream", json=body) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[len("data: "):]))
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
        assert json.loads(r.text.strip()[len("data: "):]) == {"error": "invalid request: max_tokens must be at least 1"}
        r = await http.post(url, json={"max_tokens": 3})
        assert "exactly one of text_input" in r.text


@session_loop
async def test_backend_matches_embedded_with_logprobs_and_stops(triton, embedded):
    for i, sampling in enumerate([SamplingParams(max_tokens=5, logprobs=3),
                                  SamplingParams(max_tokens=12, stop=(" as",), temperature=0.8, seed=7),
                                  SamplingParams(max_tokens=4, top_k=3, temperature=1.0, seed=1, stop_token_ids=(349,))]):
        request = GenerateRequest(f"lp{i}", [2] + embedded.tokenizer.encode(PROMPTS[0], add_special_tokens=False), sampling)
        expected = await _collect(embedded.generate(request))
        got = await _collect(triton.backend.generate(request))
        assert _summary(got) == _summary(expected)
        if sampling.logprobs:
            for g, e in zip(got, expected):
                assert [(t.token_id, [x for x, _ in t.top]) for t in g.logprobs] == [(t.token_id, [x for x, _ in t.top]) for t in e.logprobs]
                np.testing.assert_allclose([t.logprob for t in g.logprobs], [t.logprob for t in e.logprobs], rtol=1e-5)


@session_loop
async def test_backend_images_match_embedded(triton, embedded):
    prompt = "<|turn>user\nWhat is in <|image|> and <|image|>?<turn|>\n<|turn>model\n"
    request = GenerateRequest("img", prompt, SamplingParams(max_tokens=5), images=(_png(1), _png(2)), image_max_soft_tokens=70)
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
    requests = [GenerateRequest(f"c{i}", PROMPTS[i % len(PROMPTS)], SamplingParams(max_tokens=4 + i % 9, ignore_eos=True))
                for i in range(32)]
    expected = await asyncio.gather(*[_collect(embedded.generate(r)) for r in requests])
    got = await asyncio.gather(*[_collect(triton.backend.generate(r)) for r in requests])
    for r, g, e in zip(requests, got, expected):
        assert [o.token_ids for o in g] == [o.token_ids for o in e], r.request_id
        assert g[-1].usage == e[-1].usage and g[-1].finish_reason == "length"


async def _start_long(backend, rid: str):
    outs: list = []

    async def run():
        async for out in backend.generate(GenerateRequest(rid, PROMPTS[3], SamplingParams(max_tokens=3000, ignore_eos=True))):
            outs.append(out)

    task = asyncio.create_task(run())
    while len(outs) < 3:
        assert not task.done(), task
        await asyncio.sleep(0.01)
    return task, outs


def _busy(server):
    m = _metrics(server)
    return m if m["num_running"] >= 1 and m["kv_blocks_free"] < m["kv_blocks_total"] else None


def _idle(server):
    m = _metrics(server)
    return m if m["num_running"] == 0 and m["num_waiting"] == 0 and m["kv_blocks_free"] == m["kv_blocks_total"] else None


@session_loop
async def test_abort_cancels_the_triton_request_and_frees_kv_blocks(triton):
    task, outs = await _start_long(triton.backend, "long1")
    await asyncio.to_thread(_wait_for, lambda: _busy(triton.server), 10, "the request to hold KV blocks")
    await triton.backend.abort("long1")
    await asyncio.wait_for(task, 10)
    assert outs[-1].finished and outs[-1].finish_reason == "abort"
    assert len(outs) < 3000
    await asyncio.to_thread(_wait_for, lambda: _idle(triton.server), 10, "KV blocks to be freed")


@session_loop
async def test_consumer_leaving_cancels_the_triton_request(triton):
    stream = triton.backend.generate(GenerateRequest("long2", PROMPTS[4], SamplingParams(max_tokens=3000, ignore_eos=True)))
    async for _ in stream:
        break
    await asyncio.to_thread(_wait_for, lambda: _busy(triton.server), 10, "the request to hold KV blocks")
    await stream.aclose()
    await asyncio.to_thread(_wait_for, lambda: _idle(triton.server), 10, "KV blocks to be freed")


def test_tritonclient_stream_cancellation_frees_kv_blocks(triton):
    request = GenerateRequest("long3", PROMPTS[5], SamplingParams(max_tokens=3000, ignore_eos=True))
    responses: queue.Queue = queue.Queue()
    client = tritonclient_grpc.InferenceServerClient(triton.server.grpc_url)
    client.start_stream(callback=lambda result, error: responses.put(error or result))
    try:
        client.async_stream_infer("gemma4", numpy_inputs_to_grpc(protocol.encode_request(request)), request_id="long3")
        assert not isinstance(responses.get(timeout=30), Exception)
        _wait_for(lambda: _busy(triton.server), 10, "the request to hold KV blocks")
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()
    _wait_for(lambda: _idle(triton.server), 10, "KV blocks to be freed")


@session_loop
async def test_http_generate_stream_disconnect_frees_kv_blocks(triton):
    body = {"text_input": PROMPTS[0], "max_tokens": 3000, "ignore_eos": True}
    async with httpx.AsyncClient(timeout=30) as http:
        async with http.stream("POST", f"{triton.server.http_url}/v2/models/gemma4/generate_stream", json=body) as r:
            events = 0
            async for line in r.aiter_lines():
                events += line.startswith("data: ")
                if events == 3:
                    break
            await asyncio.to_thread(_wait_for, lambda: _busy(triton.server), 10, "the request to hold KV blocks")
    await asyncio.to_thread(_wait_for, lambda: _idle(triton.server), 10, "KV blocks to be freed")


@session_loop
async def test_unreachable_triton_is_unavailable_not_a_crash(engine_dir):
    (port,) = free_ports(1)
    backend = TritonBackend.from_uri(f"triton://127.0.0.1:{port}", engine_dir=engine_dir)
    backend.start()
    try:
        assert backend.health() is False
        with pytest.raises(TritonUnavailable):
            await _collect(backend.generate(GenerateRequest("down", "hi")))
    finally:
        backend.shutdown()
