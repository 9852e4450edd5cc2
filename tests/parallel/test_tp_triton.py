"""The Triton model repository hosting a tensor-parallel engine: the Python backend's model process is
rank 0 and starts rank 1 (config.pbtxt's tensor_parallel_size / enable_expert_parallel parameters), on a
real tritonserver (the nvidia-pytriton wheel), against the single-process runtime's tokens."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil

import pytest

from gemma_runtime.api import GenerateRequest, SamplingParams
from gemma_runtime.config import RuntimeConfig
from gemma_runtime.engine.llm_engine import LLMEngine
from tests.e2e.conftest import free_ports
from tests.parallel.conftest import cmdline, descendants_of, wait_gone

PROMPT = [2, 100, 200, 300, 400, 500]


def test_triton_hosts_a_tensor_parallel_engine(random_tiny_engine_dir, tmp_path):
    if not (shutil.which("tritonserver") or importlib.util.find_spec("pytriton")):
        pytest.skip("no tritonserver on PATH and nvidia-pytriton is not installed")
    from triton_bridge.client import TritonBackend
    from triton_bridge.launcher import TritonPorts, start_triton

    sampling = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    expected = LLMEngine(random_tiny_engine_dir, RuntimeConfig(max_num_seqs=4)).generate(
        [GenerateRequest("a", PROMPT, sampling)]
    )["a"]
    server = start_triton(
        random_tiny_engine_dir,
        TritonPorts(*free_ports(3)),
        runtime_config={"device": "cpu", "max_num_seqs": 4},
        model_params={"tensor_parallel_size": "2", "enable_expert_parallel": "true"},
        log_path=tmp_path / "tritonserver.log",
        timeout=300,
        record_engine_path=False,
    )
    try:
        procs = descendants_of(server.process.pid)  # the backend stub, rank 1, the resource tracker
        assert sum(b"spawn_main" in cmdline(p) for p in procs) == 1, [cmdline(p) for p in procs]
        backend = TritonBackend.from_uri(server.backend_uri, engine_dir=random_tiny_engine_dir)
        backend.start()

        async def tokens() -> list[int]:
            return [t async for out in backend.generate(GenerateRequest("a", PROMPT, sampling)) for t in out.token_ids]

        assert asyncio.run(tokens()) == expected
        backend.shutdown()
        assert "tensor_parallel_size=2, enable_expert_parallel=True" in server.log_path.read_text()
    finally:
        server.stop()
    assert wait_gone(procs) == [], "a rank outlived tritonserver"
