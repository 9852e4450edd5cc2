"""The image tests' local HTTP server (real Pillow images, misbehaving on purpose), DNS fakes and
policies, shared by the format/limit tests and the address/redirect tests."""

from __future__ import annotations

import io
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from PIL import Image

import server.images.addresses as addresses
from server.images import ImageError, ImageFetchPolicy, load_image

LOCAL = ImageFetchPolicy(allow_private_addresses=True, timeout_s=2.0)
# Only the test server's own address is allowed: other loopback and private targets stay refused.
PINNED = ImageFetchPolicy(allowed_networks=("127.0.0.1/32",), timeout_s=2.0)


def make_image(fmt: str, size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buf, format=fmt)
    return buf.getvalue()


IMAGES = {fmt: make_image(fmt) for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP")}


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG whose header declares width x height over a tiny (truncated) IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def gif_with_huge_second_frame() -> bytes:
    """A 10x10-screen GIF whose second frame descriptor asks for 9000x9000 (Pillow's open() only
    reads the first frame, so only a walk over the descriptors sees it)."""
    small = make_image("GIF", (10, 10))
    assert small.endswith(b"\x3b")
    frame = b"\x2c" + (0).to_bytes(2, "little") * 2 + (9000).to_bytes(2, "little") * 2 + b"\x00" + b"\x02\x00"
    return small[:-1] + frame + b"\x3b"


# ---------------------------------------------------------------------------------------------------
# the local image server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address) -> None:
        # The fetcher hangs up on purpose (byte caps, timeouts): a broken pipe here is the expected end.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send(self, body: bytes, ctype: str = "application/octet-stream", status: int = 200, **headers) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        srv = self.server
        srv.log.append((self.path, self.headers.get("Host")))
        path, _, query = self.path.partition("?")
        parts = path.strip("/").split("/")
        try:
            if parts[0] == "img":  # the Content-Type deliberately lies: the format comes from the bytes
                self._send(IMAGES[parts[1]], ctype="image/png")
            elif parts[0] == "bomb":
                self._send(png_claiming(100_000, 100_000), ctype="image/png")
            elif parts[0] == "gifbomb":
                self._send(gif_with_huge_second_frame(), ctype="image/gif")
            elif parts[0] == "declared-huge":  # announces 1 GB, then sends nothing for a while
                self.send_response(200)
                self.send_header("Content-Length", str(10**9))
                self.end_headers()
                self.wfile.flush()
                srv.stop.wait(3)
            elif parts[0] == "chunked-forever":  # no Content-Length: only counting bytes can stop it
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                block = b"x" * 65536
                for _ in range(2000):
                    if srv.stop.is_set():
                        break
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                srv.chunks_done.set()
            elif parts[0] == "hang":  # no headers at all for a while
                srv.stop.wait(3)
            elif parts[0] == "dribble":  # one byte every 50 ms: no single read ever times out
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for _ in range(100):
                    if srv.stop.wait(0.05):
                        break
                    self.wfile.write(b"1\r\nx\r\n")
                    self.wfile.flush()
            elif parts[0] == "redirect":
                self._redirect(query.removeprefix("to="))
            elif parts[0] == "chain":  # /chain/N redirects N times before the image
                n = int(parts[1])
                self._redirect(f"/chain/{n - 1}" if n > 1 else "/img/PNG")
            elif parts[0] == "loop":
                self._redirect("/loop")
            elif parts[0] == "status":
                self._send(b"nope", ctype="text/plain", status=int(parts[1]))
            elif parts[0] == "gzip":
                self._send(zlib.compress(IMAGES["PNG"]), Content_Encoding="gzip")
            elif parts[0] == "truncated":
                self._send(IMAGES["PNG"][:-30], ctype="image/png")
            else:
                self._send(b"not found", status=404)
        except (BrokenPipeError, ConnectionResetError):
            srv.client_hung_up.set()


@pytest.fixture(scope="module")
def srv():
    server = _Server(("127.0.0.1", 0), _Handler)
    server.log, server.stop = [], threading.Event()
    server.client_hung_up, server.chunks_done = threading.Event(), threading.Event()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.stop.set()
    server.shutdown()
    server.server_close()


def paths_seen(srv) -> list[str]:
    return [p for p, _ in srv.log]


class RecordingTransport(httpx.AsyncHTTPTransport):
    """The real transport, recording every request that reaches the network layer."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[httpx.URL] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(request.url)
        return await super().handle_async_request(request)


@pytest.fixture
def no_resolve(monkeypatch):
    async def forbidden(host, port):
        raise AssertionError(f"resolved {host}, but a literal must be judged without the network")

    monkeypatch.setattr(addresses, "_getaddrinfo", forbidden)


@pytest.fixture
def fake_dns(monkeypatch):
    """Host name -> list of answers (one per resolution; the last repeats); records calls."""
    table: dict[str, list[list[str]]] = {}
    calls: list[str] = []

    async def resolve(host, port):
        calls.append(host)
        answers = table[host]
        return answers.pop(0) if len(answers) > 1 else answers[0]

    monkeypatch.setattr(addresses, "_getaddrinfo", resolve)
    return table, calls


async def expect_error(url: str, policy: ImageFetchPolicy, client=None, status: int = 400) -> ImageError:
    with pytest.raises(ImageError) as info:
        await load_image(url, policy, client)
    err = info.value
    assert err.status_code == status, err.message
    assert err.message == str(err) and err.message.endswith(".")
    return err
