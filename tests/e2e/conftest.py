"""Live-server fixtures: one tritonserver for the session, the OpenAI server on a free local port in a
uvicorn thread in front of either backend (in-process runtime or Triton), and a local HTTP server for
image URLs. The taught tiny engine comes from tests/conftest.py."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import threading
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import openai
import pytest

from bench.uvicorn_thread import UvicornThread

REPO_ROOT = Path(__file__).resolve().parents[2]
SEED_MODEL = "google/gemma-4-26b-a4b-it"  # the seed's requests name this model: the server answers to it
MAX_IMAGES = 2
MAX_BODY_BYTES = 4 * 1024 * 1024
API_KEY = "e2e-secret"


@dataclass(frozen=True)
class LiveServer:
    base_url: str  # http://127.0.0.1:PORT (append /v1 for the SDKs)
    secured_url: str  # the same backend behind an API key
    backend: object  # server.backend.EmbeddedBackend: tests read its engine stats


# The same runtime settings in Triton and in process (CPU even where CUDA exists).
RUNTIME = {"max_num_seqs": 32, "device": "cpu"}


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="session")
def triton_server(taught_engine_dir, tmp_path_factory):
    """One real tritonserver for the session, started by the same code as `make triton`."""
    from triton_bridge.launcher import TritonPorts, start_triton

    if not (shutil.which("tritonserver") or importlib.util.find_spec("pytriton")):
        pytest.skip("no tritonserver on PATH and nvidia-pytriton is not installed")
    ports = TritonPorts(*free_ports(3))
    log = tmp_path_factory.mktemp("triton-log") / "tritonserver.log"
    server = start_triton(
        taught_engine_dir, ports, runtime_config=RUNTIME, log_path=log, timeout=300, record_engine_path=False
    )
    yield server
    server.stop()


def _backend(kind: str, engine_dir: Path, request):
    from gemma_runtime.config import RuntimeConfig
    from server.backend import EmbeddedBackend

    if kind in ("embedded", "engine-process"):
        return EmbeddedBackend.from_engine_dir(engine_dir, RuntimeConfig(**RUNTIME), kind == "engine-process")
    from triton_bridge.client import TritonBackend

    triton = request.getfixturevalue("triton_server")
    return TritonBackend.from_uri(triton.backend_uri, engine_dir=engine_dir)


@pytest.fixture(scope="session", params=["embedded", "engine-process", "triton"])
def live_server(request, taught_engine_dir) -> LiveServer:
    """The OpenAI server in front of each backend in turn: the whole suite runs against all three (the
    runtime on a thread of the server, in a worker process (`--engine-process`), behind Triton)."""
    from server.app import create_app
    from server.settings import ServerSettings

    backend = _backend(request.param, taught_engine_dir, request)
    settings = ServerSettings(
        engine_dir=str(taught_engine_dir),
        served_model_name=SEED_MODEL,
        allow_local_image_urls=True,
        max_images_per_prompt=MAX_IMAGES,
        max_request_bytes=MAX_BODY_BYTES,
    )
    app = create_app(settings, backend)
    secured = create_app(ServerSettings(served_model_name=SEED_MODEL, api_key=API_KEY), backend, manage_backend=False)
    with UvicornThread(app) as main, UvicornThread(secured) as locked:
        yield LiveServer(main.base_url, locked.base_url, backend)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="session")
def image_server(tmp_path_factory):
    """Serves the corpus images under the seed's file names (and a few others) on 127.0.0.1."""
    from engine_builder.tiny.taught_corpus import BLUE_SQUARE, RED_SQUARE

    root = tmp_path_factory.mktemp("images")
    files = {
        "example1b.jpg": RED_SQUARE.encoded("JPEG"),
        "dgx-b200-hero-bm-v2-l580-d.jpg": RED_SQUARE.encoded("JPEG"),
        "red.png": RED_SQUARE.encoded("PNG"),
        "red.gif": RED_SQUARE.encoded("GIF"),
        "blue.png": BLUE_SQUARE.encoded("PNG"),
    }
    import io

    from PIL import Image

    bmp = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(bmp, format="BMP")
    files["red.bmp"] = bmp.getvalue()
    for name, data in files.items():
        (root / name).write_bytes(data)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def base(live_server) -> str:
    return live_server.base_url + "/v1"


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=base, api_key="not-used", max_retries=0, timeout=120)


# -- the Triton tests (test_triton*.py): the session's tritonserver against the runtime in this process


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
    from triton_bridge.client import TritonBackend

    uri = triton_server.backend_uri
    backend = TritonBackend.from_uri(uri, engine_dir=engine_dir)
    backend.poll_interval = 0.1
    backend.start()
    yield SimpleNamespace(server=triton_server, backend=backend, uri=uri)
    backend.shutdown()
