"""The gemma4 model behind a real tritonserver (started by the same code as `make triton`), tiny engine.

Triton's own protocols (gRPC ModelStreamInfer from tritonclient, HTTP generate_stream SSE) and the
translator's client (triton_bridge.client) are checked against the runtime run in this process:
same tokens, same text deltas, same finish reasons and usage. One tritonserver for the session.

This file: the protocol pieces that need no server (model config, request codec, URIs and ports, the
launcher) and the server's lifecycle (health and stats, the translator across Triton restarts, engine
discovery, an unreachable Triton). The streams against the in-process runtime: test_triton_streams.py;
cancellation freeing KV blocks: test_triton_cancel.py; fixtures in conftest.py, helpers in triton_support.py.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")

from gemma_runtime.api import GenerateRequest, SamplingParams  # noqa: E402
from tests.e2e.conftest import RUNTIME, free_ports  # noqa: E402
from tests.e2e.triton_support import _collect, _wait_for, session_loop  # noqa: E402
from triton_bridge import protocol  # noqa: E402
from triton_bridge.client import TritonBackend, TritonUnavailable, parse_uri  # noqa: E402
from triton_bridge.launcher import DEFAULT_MODEL_REPO, TritonPorts, model_config_json, start_triton  # noqa: E402

# --- no server needed ---------------------------------------------------------------------------------


def test_config_pbtxt_declares_the_protocol_tensors():
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(
        (DEFAULT_MODEL_REPO / "gemma4" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    dtype = {
        "BYTES": "TYPE_STRING",
        "INT32": "TYPE_INT32",
        "INT64": "TYPE_INT64",
        "FP32": "TYPE_FP32",
        "BOOL": "TYPE_BOOL",
    }
    declared_in = {
        t.name: (model_config_pb2.DataType.Name(t.data_type), tuple(t.dims), t.optional) for t in config.input
    }
    declared_out = {t.name: (model_config_pb2.DataType.Name(t.data_type), tuple(t.dims)) for t in config.output}
    assert declared_in == {s.name: (dtype[s.datatype], s.dims, True) for s in protocol.INPUTS}
    assert declared_out == {s.name: (dtype[s.datatype], s.dims) for s in protocol.OUTPUTS}
    assert config.backend == "python" and config.max_batch_size == 0
    assert config.model_transaction_policy.decoupled
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_MODEL]


def test_request_codec_round_trips_every_sampling_field():
    sampling = SamplingParams(
        max_tokens=7,
        temperature=0.5,
        top_p=0.9,
        top_k=5,
        min_p=0.1,
        seed=11,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        stop=("x", "yz"),
        stop_token_ids=(3, 4),
        ignore_eos=True,
        include_stop_str_in_output=True,
        logprobs=2,
        skip_special_tokens=True,
        min_tokens=2,
    )
    request = GenerateRequest("r", "hi <|image|>", sampling, images=(b"\x89PNG..",), image_max_soft_tokens=70)
    tensors = protocol.encode_request(request)
    assert protocol.decode_request("r", tensors.get) == request
    ids = GenerateRequest("r", [5, 6, 7])
    assert protocol.decode_request("r", protocol.encode_request(ids).get) == ids
    with pytest.raises(ValueError, match="exactly one of text_input"):
        protocol.decode_request("r", {}.get)
    with pytest.raises(ValueError, match="max_tokens"):
        protocol.decode_request(
            "r", {"text_input": np.array([b"x"], dtype=object), "max_tokens": np.array([0], dtype=np.int32)}.get
        )


def test_uri_and_ports():
    assert parse_uri("triton://h:9001") == ("h:9001", "gemma4", "http://h:9002/metrics")
    assert parse_uri("triton://h:9001/other?metrics_port=7") == ("h:9001", "other", "http://h:7/metrics")
    with pytest.raises(ValueError):
        parse_uri("http://h:1")
    assert TritonPorts.from_env({}) == TritonPorts(8010, 8011, 8012)
    assert TritonPorts.from_env(
        {"TRITON_HTTP_PORT": "1", "TRITON_GRPC_PORT": "2", "TRITON_METRICS_PORT": "3"}
    ) == TritonPorts(1, 2, 3)


def test_launcher_sets_the_engine_in_the_model_config(tmp_path):
    config = json.loads(model_config_json(tmp_path, DEFAULT_MODEL_REPO, {"max_num_seqs": 4}))
    assert config["parameters"]["engine_dir"]["stringValue"] == str(tmp_path)
    assert json.loads(config["parameters"]["runtime_config"]["stringValue"]) == {"max_num_seqs": 4}


# --- against the running server -----------------------------------------------------------------------


def test_health_and_stats_through_the_client(triton):
    _wait_for(triton.backend.health, what="backend health")
    # Earlier tests share this server: wait until whatever they left finishing is done, then every
    # page must be free again.
    stats = _wait_for(
        lambda: (s := triton.backend.stats()).kv_blocks_total and s.num_running == 0 and s, 30, "idle stats"
    )
    assert stats.kv_blocks_free == stats.kv_blocks_total > 0 and stats.num_waiting == 0


def test_translator_survives_triton_going_down_and_coming_back(engine_dir, tmp_path):
    """The OpenAI translator in front of a Triton that is down, comes up, goes down, comes back on the
    same ports: not ready and 503 in the OpenAI envelope while down, service again when it is back,
    with the same translator process and client all along."""
    from bench.uvicorn_thread import UvicornThread
    from server.app import create_app
    from server.settings import ServerSettings

    ports = TritonPorts(*free_ports(3))
    backend = TritonBackend.from_uri(
        f"triton://127.0.0.1:{ports.grpc}?metrics_port={ports.metrics}", engine_dir=engine_dir
    )
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
            server = start_triton(
                engine_dir,
                ports,
                runtime_config=RUNTIME,
                log_path=tmp_path / f"triton{round_}.log",
                timeout=300,
                record_engine_path=False,
            )
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
