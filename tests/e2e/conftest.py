"""Live-server fixtures: the taught tiny engine (built once, cached by the builder's source hash), the
OpenAI server on a free local port in a uvicorn thread, and a local HTTP server for image URLs."""

from __future__ import annotations

import hashlib
import json
import tempfile
import shutil
import threading
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from server.uvicorn_thread import UvicornThread

REPO_ROOT = Path(__file__).resolve().parents[2]
SEED_MODEL = "google/gemma-4-26b-a4b-it"  # the seed's requests name this model: the server answers to it
# The seed asks for max_tokens=4096 on top of its prompts: the test engine serves 8k tokens.
E2E_MAX_MODEL_LEN = 8192
MAX_IMAGES = 2
MAX_BODY_BYTES = 4 * 1024 * 1024
API_KEY = "e2e-secret"


def _builder_fingerprint() -> str:
    """Everything the taught engine depends on: rebuild when any of it changes."""
    h = hashlib.sha256()
    roots = [REPO_ROOT / "build" / "engine_builder", REPO_ROOT / "gemma_runtime" / "config.py", REPO_ROOT / "gemma_runtime" / "vision"]
    files = sorted(p for r in roots for p in ([r] if r.is_file() else r.rglob("*")) if p.is_file() and "__pycache__" not in p.parts)
    for p in files:
        h.update(str(p.relative_to(REPO_ROOT)).encode())
        h.update(p.read_bytes())
    h.update(str(E2E_MAX_MODEL_LEN).encode())
    return h.hexdigest()[:16]


def build_taught_engine(out_root: Path) -> Path:
    from engine_builder.convert import convert_folder
    from engine_builder.sources import TINY_MODEL_NAME
    from engine_builder.taught_tiny import make_taught_tiny_checkpoint

    with tempfile.TemporaryDirectory(prefix="e2e-taught-") as tmp:
        ckpt = make_taught_tiny_checkpoint(Path(tmp) / "gemma-4-tiny-it")
        # RoPE has no learned positions: a longer context is a config change, not a retraining.
        cfg_path = ckpt / "config.json"
        cfg = json.loads(cfg_path.read_text())
        text = cfg.get("text_config", cfg)
        text["max_position_embeddings"] = max(int(text.get("max_position_embeddings") or 0), E2E_MAX_MODEL_LEN)
        cfg_path.write_text(json.dumps(cfg, indent=2))
        return convert_folder(
            ckpt, out_root, engine_name="gemma-4-tiny-it-e2e", dtype="float32", model_name=TINY_MODEL_NAME,
            checkpoint_id="tiny", max_model_len=E2E_MAX_MODEL_LEN, progress=False,
        )  # fmt: skip


@pytest.fixture(scope="session")
def taught_engine_dir() -> Path:
    root = REPO_ROOT / ".cache" / "e2e-engines"
    cache = root / _builder_fingerprint()
    engine = cache / "gemma-4-tiny-it-e2e"
    if not (engine / "engine.json").is_file():
        for stale in root.glob("*"):  # engines of older builder sources
            shutil.rmtree(stale, ignore_errors=True)
        engine = build_taught_engine(cache)
    return engine


@dataclass(frozen=True)
class LiveServer:
    base_url: str  # http://127.0.0.1:PORT (append /v1 for the SDKs)
    secured_url: str  # the same backend behind an API key
    backend: object  # server.backend.EmbeddedBackend: tests read its engine stats


@pytest.fixture(scope="session")
def live_server(taught_engine_dir) -> LiveServer:
    from gemma_runtime.config import RuntimeConfig
    from server.app import create_app
    from server.backend import EmbeddedBackend
    from server.settings import ServerSettings

    backend = EmbeddedBackend.from_engine_dir(taught_engine_dir, RuntimeConfig(max_num_seqs=32))
    settings = ServerSettings(
        engine_dir=str(taught_engine_dir), served_model_name=SEED_MODEL, allow_local_image_urls=True,
        max_images_per_prompt=MAX_IMAGES, max_request_bytes=MAX_BODY_BYTES,
    )  # fmt: skip
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
    from engine_builder.taught_corpus import BLUE_SQUARE, RED_SQUARE

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
