"""ServerSettings: defaults, then environment, then CLI flags; read at startup, never at import."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gemma_runtime.config import RuntimeConfig
from server.__main__ import parse_args, runtime_config_from_args, settings_from_args
from server.settings import ServerSettings


def test_env_then_flags_override_defaults(monkeypatch):
    env = {"NIM_MAX_IMAGES_PER_PROMPT": "3", "GEMMA_SERVER_API_KEY": "from-env", "GEMMA_ALLOW_LOCAL_IMAGE_URLS": "true"}
    s = ServerSettings.from_env(env)
    assert (s.max_images_per_prompt, s.api_key, s.allow_local_image_urls) == (3, "from-env", True)
    s = ServerSettings.from_env(env, api_key="from-flag", max_images_per_prompt=None)
    assert (s.api_key, s.max_images_per_prompt) == ("from-flag", 3)
    assert ServerSettings.from_env({}) == ServerSettings()
    with pytest.raises(AttributeError):
        s.api_key = "x"  # frozen


def test_cli_flags(monkeypatch):
    monkeypatch.setenv("NIM_MAX_IMAGES_PER_PROMPT", "7")
    args = parse_args(
        ["--engine", "e", "--port", "9000", "--served-model-name", "m", "--api-key", "k", "--allow-local-image-urls"]
    )
    s = settings_from_args(args)
    assert (
        s.engine_dir,
        s.port,
        s.host,
        s.served_model_name,
        s.api_key,
        s.allow_local_image_urls,
        s.max_images_per_prompt,
    ) == ("e", 9000, "0.0.0.0", "m", "k", True, 7)
    assert settings_from_args(parse_args(["--backend", "triton://h:8001"])).backend == "triton://h:8001"


def test_runtime_flags():
    """The embedded engine's settings: defaults are the runtime's own (device: cuda when visible)."""
    assert runtime_config_from_args(parse_args(["--engine", "e", "--device", "cpu"])) == RuntimeConfig(device="cpu")
    args = parse_args(
        [
            "--engine",
            "e",
            "--device",
            "cpu",
            "--dtype",
            "bfloat16",
            "--max-num-seqs",
            "8",
            "--max-model-len",
            "4096",
            "--gpu-memory-utilization",
            "0.8",
            "--enforce-eager",
            "--disable-overlap-schedule",
        ]
    )
    assert runtime_config_from_args(args) == RuntimeConfig(
        device="cpu",
        dtype="bfloat16",
        max_num_seqs=8,
        max_model_len=4096,
        gpu_memory_utilization=0.8,
        decode_graph_max_batch=0,
        prefill_graph_max_tokens=0,
        overlap_scheduling=False,
    )
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        runtime_config_from_args(parse_args(["--engine", "e", "--gpu-memory-utilization", "1.5"]))


def test_importing_reads_no_environment():
    # a fresh interpreter with an unparsable value: importing must not touch it, building settings must
    env = {**os.environ, "NIM_MAX_IMAGES_PER_PROMPT": "not a number"}
    code = "import server.app, server.__main__, server.chat; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "ok"
    code = "from server.settings import ServerSettings; ServerSettings.from_env()"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode != 0


def test_idle_connections_outlive_the_clients_own_keep_alive():
    """The server must not be the side that closes an idle keep-alive connection: a client reusing it at
    that moment loses its request (httpx's ReadError). httpx (so the openai SDK) drops idle ones after 5 s."""
    import httpx
    from openai._constants import DEFAULT_CONNECTION_LIMITS

    from server.__main__ import uvicorn_config

    client_expiry = max(httpx.Limits().keepalive_expiry, DEFAULT_CONNECTION_LIMITS.keepalive_expiry or 0)
    default = uvicorn_config(None, settings_from_args(parse_args([])))
    assert default.timeout_keep_alive > max(client_expiry, 60)  # 60: common load balancers' idle timeout
    given = uvicorn_config(None, settings_from_args(parse_args(["--timeout-keep-alive", "9"])))
    assert given.timeout_keep_alive == 9
    env = ServerSettings.from_env({"GEMMA_TIMEOUT_KEEP_ALIVE": "12"})
    assert uvicorn_config(None, env).timeout_keep_alive == 12
