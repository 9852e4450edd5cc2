"""Prefix caching's switches and reports outside the runtime: the server flag, the Triton wire protocol,
the OpenAI usage object and the Prometheus counters."""

from __future__ import annotations

from prometheus_client import generate_latest

from gemma_runtime.api import EngineStats, RequestOutput, Usage
from gemma_runtime.config import RuntimeConfig
from server.__main__ import parse_args, runtime_config_from_args
from server.chat import usage_json
from server.metrics import ServerMetrics
from triton_bridge import protocol


def test_no_prefix_caching_flag():
    assert RuntimeConfig().enable_prefix_caching
    assert runtime_config_from_args(parse_args(["--engine", "e", "--device", "cpu"])).enable_prefix_caching
    off = runtime_config_from_args(parse_args(["--engine", "e", "--device", "cpu", "--no-prefix-caching"]))
    assert off == RuntimeConfig(device="cpu", enable_prefix_caching=False)


def test_cached_tokens_cross_the_triton_wire():
    out = RequestOutput("r", (5,), "x", finished=True, finish_reason="length", usage=Usage(40, 1, 32))
    tensors = protocol.encode_output(out)
    assert {s.name for s in protocol.OUTPUTS} >= set(tensors)
    back = protocol.decode_output("r", tensors.get, final=True)
    assert back.usage == Usage(40, 1, 32)
    # an older model without the tensor: no cached tokens, not an error
    older = {k: v for k, v in tensors.items() if k != "cached_tokens"}
    assert protocol.decode_output("r", older.get, final=True).usage == Usage(40, 1, 0)


def test_usage_object_has_prompt_tokens_details():
    assert usage_json(40, 2, 32) == {
        "prompt_tokens": 40,
        "completion_tokens": 2,
        "total_tokens": 42,
        "prompt_tokens_details": {"cached_tokens": 32},
    }


class _Backend:
    def __init__(self, stats):
        self._stats = stats

    def stats(self):
        return self._stats


def test_prefix_cache_counters_and_kv_gauge():
    stats = EngineStats(0, 0, kv_blocks_total=10, kv_blocks_free=10, prefix_cache_queries=300, prefix_cache_hits=256)
    text = generate_latest(ServerMetrics(_Backend(stats), "m").registry).decode()
    assert 'gemma_prefix_cache_queries_total{model_name="m"} 300.0' in text
    assert 'gemma_prefix_cache_hits_total{model_name="m"} 256.0' in text
    assert 'gemma_kv_cache_usage_perc{model_name="m"} 0.0' in text
