"""`make triton ENGINE=...`: a real Triton Inference Server on triton_model_repo/ hosting one engine.

Uses the `tritonserver` on PATH (NVIDIA's containers); otherwise the binary that the `nvidia-pytriton`
wheel carries, run on a plain machine (CPU-only works) as follows:
- the wheel's Python backend (`libtriton_python.so`, `triton_python_backend_utils.py`) and the stub built
  for the running Python (`python_backend_stubs/3.X/triton_python_backend_stub`) are copied into one
  backend folder passed with `--backend-directory`;
- `LD_LIBRARY_PATH` gets the wheel's `nvidia_pytriton.libs` (the copied stub loses its RPATH to the
  bundled libcudart) and this Python's libpython folder (so the stub embeds the same patch release);
- this environment's `bin` goes first on PATH: the stub runs that Python, so the model imports torch
  and the project from it.

The model is loaded explicitly with its config plus the `engine_dir` parameter, so clients can read the
engine path from the model config; the same path is also written to `engine_path.txt` beside
config.pbtxt, for a plain `tritonserver --model-repository triton_model_repo` later.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from gemma_runtime.engine_format.files import ENGINE_JSON
from triton_bridge.process_group import end_process_group
from triton_bridge.protocol import ENGINE_PATH_FILE, MODEL_NAME

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_REPO = REPO_ROOT / "triton_model_repo"
DEFAULT_BACKEND_DIR = REPO_ROOT / "triton_backends"  # git-ignored: the wheel's backend, set up on demand


@dataclass(frozen=True)
class TritonPorts:
    http: int = 8010
    grpc: int = 8011
    metrics: int = 8012

    @classmethod
    def from_env(cls, env: dict | None = None) -> TritonPorts:
        """TRITON_HTTP_PORT / TRITON_GRPC_PORT / TRITON_METRICS_PORT; 8010-8012 keep 8000 for the translator."""
        env = os.environ if env is None else env
        d = cls()
        return cls(
            int(env.get("TRITON_HTTP_PORT", d.http)),
            int(env.get("TRITON_GRPC_PORT", d.grpc)),
            int(env.get("TRITON_METRICS_PORT", d.metrics)),
        )


@dataclass(frozen=True)
class TritonBinary:
    """How to run tritonserver: the executable, an optional backend folder and environment additions."""

    executable: Path
    backend_dir: Path | None = None
    env: dict = field(default_factory=dict)
    from_wheel: bool = False


@dataclass
class TritonProcess:
    process: subprocess.Popen
    ports: TritonPorts
    host: str
    log_path: Path
    engine_dir: Path

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.ports.http}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports.metrics}/metrics"

    @property
    def backend_uri(self) -> str:
        """What `make serve BACKEND=...` takes to reach this server."""
        return f"triton://{self.grpc_url}?metrics_port={self.ports.metrics}"

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if Triton has not exited within `timeout` seconds; then the rest of its
        process group (a Python backend stub outlives a server that died, and ignores SIGTERM)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        end_process_group(self.process.pid)
        return self.process.returncode


# --- finding and preparing the binary ------------------------------------------------------------


def find_tritonserver(backend_dir: Path = DEFAULT_BACKEND_DIR, executable: str | None = None) -> TritonBinary:
    """`executable` if given, else `tritonserver` on PATH (it brings its own backends), else the wheel's."""
    found = executable or shutil.which("tritonserver")
    if found:
        return TritonBinary(Path(found), env={"PATH": _path_with_venv()})
    return prepare_wheel_tritonserver(backend_dir)


def prepare_wheel_tritonserver(backend_dir: Path = DEFAULT_BACKEND_DIR) -> TritonBinary:
    try:
        import pytriton
    except ImportError as e:
        raise SystemExit(
            "no tritonserver on PATH and nvidia-pytriton is not installed: "
            "pip install -e '.[triton]' (or run inside NVIDIA's Triton container)"
        ) from e
    dist = Path(pytriton.__file__).parent / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise SystemExit(f"nvidia-pytriton has no Python backend stub for Python {version} ({stub})")
    python_dir = backend_dir / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for src in (
        dist / "backends" / "python" / "libtriton_python.so",
        dist / "backends" / "python" / "triton_python_backend_utils.py",
        stub,
    ):
        _copy_if_changed(src, python_dir / src.name)
    libs = [str(Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs")]
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and list(Path(libdir).glob(f"libpython{version}*.so*")):
        libs.append(libdir)
    old = os.environ.get("LD_LIBRARY_PATH")
    env = {"PATH": _path_with_venv(), "LD_LIBRARY_PATH": ":".join(libs + ([old] if old else []))}
    return TritonBinary(dist / "bin" / "tritonserver", backend_dir, env, from_wheel=True)


def _copy_if_changed(src: Path, dst: Path) -> None:
    if dst.is_file() and dst.stat().st_size == src.stat().st_size and dst.stat().st_mtime >= src.stat().st_mtime:
        return
    # Copy then rename: another process may be starting Triton from the same folder right now.
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
    os.close(fd)
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _path_with_venv() -> str:
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


# --- the engine path -------------------------------------------------------------------------------


def resolve_engine(engine: str | Path) -> Path:
    path = Path(engine).expanduser().resolve()
    if not (path / ENGINE_JSON).is_file():
        raise SystemExit(f"{engine} is not an engine directory (no engine.json): build one with `make engine`")
    return path


def write_engine_path(engine_dir: Path, model_repo: Path = DEFAULT_MODEL_REPO) -> Path:
    target = model_repo / MODEL_NAME / ENGINE_PATH_FILE
    target.write_text(f"{engine_dir}\n")
    return target


def model_config_json(
    engine_dir: Path, model_repo: Path, runtime_config: dict | None, model_params: dict | None = None
) -> str:
    """config.pbtxt with the engine_dir (and runtime_config, and any other `model_params`, e.g.
    max_queued_requests) parameters filled in, as the JSON that Triton's load API takes."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    text = (model_repo / MODEL_NAME / "config.pbtxt").read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    config.parameters["engine_dir"].string_value = str(engine_dir)
    if runtime_config:
        config.parameters["runtime_config"].string_value = json.dumps(runtime_config)
    for key, value in (model_params or {}).items():
        config.parameters[key].string_value = str(value)
    return json_format.MessageToJson(config)


EXIT_MARGIN_S = 10  # beyond the drain: ending what is left and shutting the engine down


def exit_timeout_s(model_repo: Path, model_params: dict | None) -> int:
    """tritonserver's --exit-timeout-secs: the model's drain_timeout (the load's parameter, else
    config.pbtxt's) plus EXIT_MARGIN_S, so Triton never aborts a drain it was asked to wait for."""
    drain = (model_params or {}).get("drain_timeout")
    if drain is None:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2

        text = (model_repo / MODEL_NAME / "config.pbtxt").read_text()
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
        drain = config.parameters["drain_timeout"].string_value if "drain_timeout" in config.parameters else 30
    return int(math.ceil(float(drain or 30))) + EXIT_MARGIN_S


# --- starting ---------------------------------------------------------------------------------------


def start_triton(
    engine: str | Path,
    ports: TritonPorts | None = None,
    *,
    host: str = "127.0.0.1",
    model_repo: Path = DEFAULT_MODEL_REPO,
    runtime_config: dict | None = None,
    log_path: Path | None = None,
    tritonserver: str | None = None,
    backend_dir: Path = DEFAULT_BACKEND_DIR,
    timeout: float = 600.0,
    extra_args: tuple[str, ...] = (),
    record_engine_path: bool = True,
    model_params: dict | None = None,
) -> TritonProcess:
    """Starts tritonserver, loads gemma4 with `engine`, and returns once the model is ready.
    Raises RuntimeError (with the server log's tail) when Triton exits or the model fails to load.
    `record_engine_path=False` leaves engine_path.txt alone (tests: the load sets the engine anyway)."""
    engine_dir = resolve_engine(engine)
    ports = ports or TritonPorts.from_env()
    model_repo = Path(model_repo).resolve()
    if record_engine_path:
        write_engine_path(engine_dir, model_repo)
    binary = find_tritonserver(backend_dir, tritonserver)
    args = [
        str(binary.executable),
        f"--model-repository={model_repo}",
        f"--http-port={ports.http}",
        f"--grpc-port={ports.grpc}",
        f"--metrics-port={ports.metrics}",
        # Explicit control: we load gemma4 ourselves, with the engine path set in its config.
        "--model-control-mode=explicit",
        # On SIGTERM the model drains its streams for its drain_timeout, then ends the rest and shuts its
        # engine down: Triton waits that long and a little more, and no longer for a stuck one.
        f"--exit-timeout-secs={exit_timeout_s(model_repo, model_params)}",
        # Unique shared-memory names: several servers (tests, users) can share one machine.
        f"--backend-config=python,shm-region-prefix-name=gemma4_{os.getpid()}_{ports.grpc}_",
    ]
    if binary.backend_dir is not None:
        args.append(f"--backend-directory={binary.backend_dir}")
    args += list(extra_args)
    env = {**os.environ, **binary.env}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    log_path = Path(log_path) if log_path else Path(tempfile.gettempdir()) / f"tritonserver-{ports.grpc}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(model_repo), start_new_session=True
        )
    triton = TritonProcess(process, ports, host, log_path, engine_dir)
    # The model asks this endpoint whether the server is exiting (triton_bridge/shutdown_watch.py).
    model_params = {"server_http_url": f"http://127.0.0.1:{ports.http}", **(model_params or {})}
    try:
        _wait_server_live(triton, timeout)
        _load_model(triton, model_config_json(engine_dir, model_repo, runtime_config, model_params), timeout)
    except BaseException:
        triton.stop()
        raise
    return triton


def _wait_server_live(triton: TritonProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    url = f"{triton.http_url}/v2/health/live"
    while time.monotonic() < deadline:
        if not triton.is_alive():
            raise RuntimeError(f"tritonserver exited with {triton.process.returncode}:\n{triton.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"tritonserver did not come up within {timeout:.0f} s:\n{triton.log_tail()}")


def _load_model(triton: TritonProcess, config_json: str, timeout: float) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        client.load_model(MODEL_NAME, config=config_json, client_timeout=timeout)
        if not client.is_model_ready(MODEL_NAME):
            raise RuntimeError(f"{MODEL_NAME} loaded but is not ready:\n{triton.log_tail()}")
    except InferenceServerException as e:
        raise RuntimeError(
            f"loading {MODEL_NAME} failed: {e.message()}\n--- tritonserver log ---\n{triton.log_tail()}"
        ) from e
    finally:
        client.close()


# --- command line ------------------------------------------------------------------------------------


def launch_preflight(args) -> tuple[TritonPorts, dict | None]:
    """The user's mistakes as one line each (server/preflight.py), before tritonserver starts."""
    from server.cli_errors import UserError
    from server.preflight import check_engine_dir, check_port_free

    check_engine_dir(args.engine)
    try:
        ports = TritonPorts.from_env()
    except ValueError as e:
        raise UserError(
            f"TRITON_HTTP_PORT / TRITON_GRPC_PORT / TRITON_METRICS_PORT must be port numbers ({e})"
        ) from None
    for name, port in (
        ("TRITON_HTTP_PORT", ports.http),
        ("TRITON_GRPC_PORT", ports.grpc),
        ("TRITON_METRICS_PORT", ports.metrics),
    ):
        check_port_free("0.0.0.0", port, f"{name}=... picks another")
    try:
        runtime_config = json.loads(args.runtime_config) if args.runtime_config else None
    except ValueError as e:
        raise UserError(
            f"--runtime-config is not JSON ({e}): e.g. --runtime-config '{{\"max_num_seqs\": 32}}'"
        ) from None
    if runtime_config is not None and not isinstance(runtime_config, dict):
        raise UserError("--runtime-config must be a JSON object, e.g. '{\"max_num_seqs\": 32}'")
    return ports, runtime_config


def main(argv: list[str] | None = None) -> int:
    from server.cli_errors import OneLineParser

    p = OneLineParser(prog="python -m triton_bridge.launcher", description=__doc__.split("\n")[0])
    p.add_argument("--engine", required=True, help="engine directory built by `make engine`")
    p.add_argument("--model-repo", default=str(DEFAULT_MODEL_REPO))
    p.add_argument("--runtime-config", default=None, help='JSON RuntimeConfig overrides, e.g. {"max_num_seqs": 32}')
    p.add_argument(
        "--tritonserver", default=None, help="tritonserver executable (default: PATH, then the pytriton wheel)"
    )
    p.add_argument("--log-file", default=None, help="server log (default: a file in the temp folder)")
    args, extra = p.parse_known_args(argv)
    ports, runtime_config = launch_preflight(args)
    print(f">> starting tritonserver: HTTP {ports.http}, gRPC {ports.grpc}, metrics {ports.metrics}", flush=True)
    triton = start_triton(
        args.engine,
        ports,
        model_repo=Path(args.model_repo),
        runtime_config=runtime_config,
        log_path=args.log_file,
        tritonserver=args.tritonserver,
        extra_args=tuple(extra),
    )
    print(
        f">> {MODEL_NAME} ready ({triton.engine_dir}); log: {triton.log_path}\n"
        f">> translator: make serve BACKEND=triton://localhost:{ports.grpc}",
        flush=True,
    )

    # The handlers only record the signal: stopping (which waits on the child) happens out here, because
    # a Popen.wait() interrupted by a signal still holds the lock a second wait() needs.
    received: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: received.append(signum))
    while triton.is_alive() and not received:
        time.sleep(0.2)
    if received:
        triton.stop()
        return 128 + received[0]
    print(f">> tritonserver exited with {triton.process.returncode}:\n{triton.log_tail()}", file=sys.stderr)
    return triton.process.returncode or 1


if __name__ == "__main__":
    sys.exit(main())
