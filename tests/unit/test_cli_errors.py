"""A user's mistakes in every command end in one line on stderr that names the problem and the fix,
a non-zero exit and no traceback (tracebacks stay for our own bugs). Each case runs the command as a
user would, in a subprocess: `python -m server` (make serve), `python -m triton_bridge.launcher`
(make triton), `python -m engine_builder` (make engine), `bench/run.py` (make bench)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="the case is a machine without a GPU")


def one_line_error(args: list[str], env: dict | None = None) -> str:
    """Runs `python ARGS`; returns its only stderr line after checking the exit and the absence of a traceback."""
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, out
    return lines[0]


@pytest.fixture
def engine_copy(random_tiny_engine_dir, tmp_path) -> Path:
    """A whole engine the test may damage."""
    return Path(shutil.copytree(random_tiny_engine_dir, tmp_path / "engine"))


@pytest.fixture
def busy_port():
    """A port something already listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def serve(*args: str) -> list[str]:
    return ["-m", "server", "--host", "127.0.0.1", *args]


# -- make serve / python -m server: the engine ---------------------------------------------------------


def test_serve_missing_engine(tmp_path):
    line = one_line_error(serve("--engine", str(tmp_path / "nope")))
    assert "nope does not exist" in line and "make engine" in line


def test_serve_folder_that_is_no_engine(tmp_path):
    line = one_line_error(serve("--engine", str(tmp_path)))
    assert "not an engine: no engine.json" in line and "make engine" in line


def test_serve_half_built_engine(engine_copy):
    (engine_copy / "engine.json").unlink()
    line = one_line_error(serve("--engine", str(engine_copy)))
    assert "stopped half-way" in line and "make engine" in line


def test_serve_engine_of_an_older_builder(engine_copy):
    meta = json.loads((engine_copy / "engine.json").read_text())
    meta["format_version"], meta["builder_version"] = 0, "0.0.1"
    (engine_copy / "engine.json").write_text(json.dumps(meta))
    line = one_line_error(serve("--engine", str(engine_copy)))
    assert (
        "built by another builder (engine format 0, builder 0.0.1" in line
        and "rebuild it with `make engine MODEL=" in line
    )


def test_serve_engine_with_weights_cut_short(engine_copy):
    weights = engine_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    line = one_line_error(serve("--engine", str(engine_copy)))
    assert "model.safetensors is cut short" in line and "rebuild" in line


def test_serve_engine_without_tokenizer(engine_copy):
    (engine_copy / "tokenizer.json").unlink()
    line = one_line_error(serve("--engine", str(engine_copy)))
    assert "tokenizer.json is missing" in line and "rebuild" in line


# -- make serve: ports, flags, the environment, the Triton backend --------------------------------------


def test_serve_port_in_use(engine_copy, busy_port):
    line = one_line_error(serve("--engine", str(engine_copy), "--port", str(busy_port), "--device", "cpu"))
    assert f"port {busy_port} on 127.0.0.1 is already in use" in line and "PORT=" in line


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--port", "eighty"], "argument --port: invalid int value: 'eighty'"),
        (["--port", "70000"], "port 70000 is out of range"),
        (["--max-num-seqs", "0"], "bad setting: block_size, max_num_seqs and max_num_batched_tokens must be positive"),
        (["--gpu-memory-utilization", "1.5"], "bad setting: gpu_memory_utilization must be in (0, 1]"),
        (["--log-level", "loud"], "--log-level 'loud': use one of"),
        (["--device", "tpu"], "--device 'tpu' is not a device"),
    ],
)
def test_serve_bad_flag_values(engine_copy, flags, expected):
    line = one_line_error(serve("--engine", str(engine_copy), "--device", "cpu", *flags))
    assert expected in line


@NO_GPU
def test_serve_cuda_without_a_gpu(engine_copy):
    line = one_line_error(serve("--engine", str(engine_copy), "--device", "cuda"))
    assert "no CUDA GPU is visible" in line and "--device cpu" in line


def test_serve_bad_environment_value(engine_copy):
    line = one_line_error(serve("--engine", str(engine_copy)), env={"NIM_MAX_IMAGES_PER_PROMPT": "many"})
    assert "NIM_MAX_IMAGES_PER_PROMPT='many' is not a valid int" in line


HEAVY = ("torch", "fastapi", "uvicorn", "transformers")


def heavy_imports_before_exit(call: str) -> list[str]:
    """Runs `call` (a CLI's main with mistaken arguments) in a fresh interpreter; returns which of the
    heavy libraries it had imported by the time it exited."""
    code = (
        f"import json, sys\ntry:\n    {call}\nexcept SystemExit:\n    pass\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "args",
    [
        ["--engine", "engines/nope"],
        ["--backend", "http://localhost:8011"],
        [],
        ["--engine", "engines/nope", "--log-level", "loud"],
    ],
)
def test_serve_mistakes_are_told_before_torch_and_the_web_stack_load(args):
    """A wrong folder or backend is told at once (well under a second), not after seconds of imports."""
    call = f"from server.__main__ import main; main({args!r})"
    assert heavy_imports_before_exit(call) == []


def test_bench_flag_mistakes_are_told_before_torch_loads():
    call = "from bench.run import main; main(['--dry-run', '--dtypes', 'fp16'])"
    assert heavy_imports_before_exit(call) == []


def test_serve_no_engine_nor_backend():
    assert "give --engine DIR" in one_line_error(serve())


def test_serve_triton_backend_not_there():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = one_line_error(serve("--backend", f"triton://127.0.0.1:{port}"))
    assert f"no Triton server answers at 127.0.0.1:{port}" in line and "make triton ENGINE=" in line


@pytest.mark.parametrize(
    "uri, expected", [("triton://localhost", "not a Triton address"), ("http://localhost:8011", "unknown backend")]
)
def test_serve_malformed_backend(uri, expected):
    assert expected in one_line_error(serve("--backend", uri))


# -- make triton -----------------------------------------------------------------------------------------


def test_triton_missing_engine(tmp_path):
    line = one_line_error(["-m", "triton_bridge.launcher", "--engine", str(tmp_path / "nope")])
    assert "nope does not exist" in line and "make engine" in line


def test_triton_port_in_use(engine_copy, busy_port):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = [s.getsockname()[1]]
    env = {"TRITON_HTTP_PORT": str(free[0]), "TRITON_GRPC_PORT": str(busy_port), "TRITON_METRICS_PORT": str(free[0])}
    line = one_line_error(["-m", "triton_bridge.launcher", "--engine", str(engine_copy)], env=env)
    assert f"port {busy_port}" in line and "already in use" in line and "TRITON_GRPC_PORT=" in line


def test_triton_bad_runtime_config(engine_copy):
    line = one_line_error(
        ["-m", "triton_bridge.launcher", "--engine", str(engine_copy), "--runtime-config", "{max_num_seqs: 4"]
    )
    assert "--runtime-config is not JSON" in line


# -- make engine -----------------------------------------------------------------------------------------


# An unknown dtype or model folder, and no network for a hub id: tests/unit/builder/test_bad_input_and_cli.py.
def test_engine_bad_flag_value(tmp_path):
    line = one_line_error(
        ["-m", "engine_builder", "--model", "tiny", "--max-model-len", "long", "--out-dir", str(tmp_path)]
    )
    assert "argument --max-model-len: invalid int value: 'long'" in line and "--help" in line


# -- make bench ------------------------------------------------------------------------------------------


@NO_GPU
def test_bench_without_a_gpu_names_the_dry_run(tmp_path):
    line = one_line_error(["bench/run.py", "--results-dir", str(tmp_path)])
    assert "no CUDA GPU is visible" in line and "BENCH_ARGS=--dry-run" in line


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--models", "7b"], "--models: unknown '7b'"),
        (["--dtypes", "fp16"], "--dtypes 'fp16': unknown 'fp16'"),
        (["--decode-graphs", "maybe"], "argument --decode-graphs: invalid choice: 'maybe'"),
    ],
)
def test_bench_bad_flags(tmp_path, flags, expected):
    assert expected in one_line_error(["bench/run.py", "--dry-run", "--results-dir", str(tmp_path), *flags])


def test_serve_mtp_without_a_drafter(random_tiny_engine_dir):
    line = one_line_error(serve("--engine", str(random_tiny_engine_dir), "--device", "cpu", "--speculative", "mtp"))
    assert "no MTP drafter" in line and "ASSISTANT=auto" in line
