"""Safe image loading: a real local HTTP server, real Pillow images, real httpx; SSRF guards checked
by asserting that refused addresses never see a request (and are not even resolved when literal)."""

from __future__ import annotations

import base64
import io
import ipaddress
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from PIL import Image

import server.images.addresses as addresses
from server.images import ImageError, ImageFetchPolicy, check_image_bytes, load_image
from server.images.addresses import is_address_allowed

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
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


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


# ---------------------------------------------------------------------------------------------------
# formats by content


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF"])
async def test_allowed_formats_load_over_http(srv, fmt):
    data = await load_image(f"{srv.base}/img/{fmt}", LOCAL)
    assert data == IMAGES[fmt]
    assert check_image_bytes(data, LOCAL) == fmt


@pytest.mark.parametrize("fmt", ["WEBP", "BMP"])
async def test_other_formats_are_400_naming_the_format(srv, fmt):
    err = await expect_error(f"{srv.base}/img/{fmt}", LOCAL)  # served as image/png: content decides
    assert f"image format {fmt} is not supported" in err.message
    assert "use GIF, JPG, JPEG or PNG" in err.message and "127.0.0.1" in err.message
    assert err.code == "unsupported_image_format"


def test_check_image_bytes_rejects_garbage_and_truncation():
    with pytest.raises(ImageError, match="not in a recognised image format"):
        check_image_bytes(b"hello, this is text", LOCAL)
    with pytest.raises(ImageError, match="corrupt or truncated"):
        check_image_bytes(IMAGES["PNG"][:-30], LOCAL)
    with pytest.raises(ImageError, match="larger than the limit of 100 bytes"):
        check_image_bytes(make_image("PNG", (64, 64)), ImageFetchPolicy(max_bytes=100))


async def test_truncated_image_over_http_is_400(srv):
    err = await expect_error(f"{srv.base}/truncated", LOCAL)
    assert "corrupt or truncated" in err.message and "127.0.0.1" in err.message


async def test_declared_huge_png_refused_from_its_header(srv):
    err = await expect_error(f"{srv.base}/bomb", LOCAL)
    assert "more than the limit" in err.message or "more pixels than the limit" in err.message
    assert err.code == "image_too_large"


def test_pixel_cap_is_ours_not_only_pillows():
    # 8000x8000 is under Pillow's own bomb guard (~179M), so only our cap can stop it
    with pytest.raises(ImageError, match="8000x8000 pixels, more than the limit of 1000000"):
        check_image_bytes(png_claiming(8000, 8000), ImageFetchPolicy(max_pixels=1_000_000))


async def test_gif_later_frame_size_counts(srv):
    with Image.open(io.BytesIO(gif_with_huge_second_frame())) as im:
        assert im.size == (10, 10)  # what Pillow reports from the header
    err = await expect_error(f"{srv.base}/gifbomb", LOCAL)
    assert "9000x9000 pixels" in err.message


# ---------------------------------------------------------------------------------------------------
# byte cap and timeouts


async def test_declared_content_length_over_cap_refused_at_once(srv):
    t0 = time.monotonic()
    err = await expect_error(f"{srv.base}/declared-huge", LOCAL)
    assert "larger than the limit" in err.message and time.monotonic() - t0 < 1.0


async def test_chunked_body_over_cap_aborted_while_streaming(srv):
    policy = ImageFetchPolicy(allow_private_addresses=True, max_bytes=256 * 1024, timeout_s=3.0)
    t0 = time.monotonic()
    err = await expect_error(f"{srv.base}/chunked-forever", policy)
    assert "larger than the limit of 262144 bytes" in err.message
    assert time.monotonic() - t0 < 2.0
    # the server could not finish its 128 MB: we hung up on it
    assert srv.client_hung_up.wait(2) and not srv.chunks_done.is_set()


async def test_no_headers_times_out_504(srv):
    t0 = time.monotonic()
    err = await expect_error(f"{srv.base}/hang", ImageFetchPolicy(allow_private_addresses=True, timeout_s=0.3),
                             status=504)
    assert "within 0.3 s" in err.message and "127.0.0.1" in err.message
    assert time.monotonic() - t0 < 1.0


async def test_timeout_is_total_not_per_read(srv):
    # every read succeeds within 50 ms; only a budget for the whole fetch can stop it
    t0 = time.monotonic()
    await expect_error(f"{srv.base}/dribble", ImageFetchPolicy(allow_private_addresses=True, timeout_s=0.4),
                       status=504)
    assert time.monotonic() - t0 < 1.0


async def test_slow_dns_counts_against_the_timeout(monkeypatch):
    import asyncio

    async def slow(host, port):
        await asyncio.sleep(5)
        return ["93.184.216.34"]
    monkeypatch.setattr(addresses, "_getaddrinfo", slow)
    await expect_error("http://slow-dns.test/a.png", ImageFetchPolicy(timeout_s=0.2), status=504)


# ---------------------------------------------------------------------------------------------------
# upstream answers


@pytest.mark.parametrize("status, ours", [(404, 400), (403, 400), (503, 502)])
async def test_upstream_error_status(srv, status, ours):
    err = await expect_error(f"{srv.base}/status/{status}", LOCAL, status=ours)
    assert f"answered HTTP {status}" in err.message


async def test_compressed_body_refused(srv):
    err = await expect_error(f"{srv.base}/gzip", LOCAL)
    assert "content-encoding gzip" in err.message


async def test_nothing_listening_is_400():
    with socket_closed_port() as port:
        err = await expect_error(f"http://127.0.0.1:{port}/x.png", LOCAL)
    assert "could not be connected to" in err.message


class socket_closed_port:
    def __enter__(self) -> int:
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc) -> None:
        pass


# ---------------------------------------------------------------------------------------------------
# addresses: refused ones see no traffic


async def test_loopback_refused_by_default_and_allowed_when_set(srv):
    before = len(srv.log)
    err = await expect_error(f"{srv.base}/img/PNG", ImageFetchPolicy())
    assert "127.0.0.1 is a private or reserved address" in err.message
    assert err.code == "image_host_not_allowed"
    assert len(srv.log) == before  # the server never saw it
    assert await load_image(f"{srv.base}/img/PNG", ImageFetchPolicy(allow_private_addresses=True)) == IMAGES["PNG"]


@pytest.mark.parametrize("url", [
    "http://10.1.2.3/a.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:8080/a.png",
    "http://0.0.0.0/a.png",
    "http://192.168.0.1/a.png",
    "http://100.64.0.1/a.png",         # carrier-grade NAT
    "http://[fe80::1]/a.png",
    "http://[::ffff:127.0.0.1]/a.png",  # IPv4-mapped loopback
    "http://[::ffff:a9fe:a9fe]/a.png",  # IPv4-mapped metadata address
    "https://224.0.0.1/a.png",          # multicast
    "http://[fd00::1]/a.png",
])
async def test_private_literals_refused_without_any_traffic(url, no_resolve):
    sent: list[httpx.Request] = []
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(200)))
    async with client:
        err = await expect_error(url, ImageFetchPolicy(), client)
    assert sent == [] and "is a private or reserved address" in err.message


@pytest.mark.parametrize("address, allowed", [
    ("8.8.8.8", True), ("2001:4860:4860::8888", True), ("93.184.216.34", True),
    ("127.0.0.1", False), ("10.0.0.1", False), ("172.16.5.4", False), ("169.254.169.254", False),
    ("0.0.0.0", False), ("255.255.255.255", False), ("192.0.2.1", False), ("198.18.0.1", False),
    ("::", False), ("::1", False), ("fec0::1", False), ("ff02::1", False),
    ("2002:7f00:1::", False), ("2002:0808:0808::", True),  # 6to4 judged by the IPv4 inside
    ("64:ff9b::a00:1", False),                             # NAT64 to 10.0.0.1
])
def test_address_classes(address, allowed):
    assert is_address_allowed(ipaddress.ip_address(address), ImageFetchPolicy()) is allowed


async def test_any_private_answer_refuses_the_host(fake_dns):
    table, calls = fake_dns
    table["mixed.test"] = [["93.184.216.34", "10.0.0.5"]]
    sent: list[httpx.Request] = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(200))) as c:
        err = await expect_error("http://mixed.test/a.png", ImageFetchPolicy(), c)
    assert "mixed.test resolves to a private or reserved address" in err.message
    assert sent == [] and calls == ["mixed.test"]


async def test_connection_pinned_to_the_checked_address(srv, fake_dns):
    # A rebinding resolver: the first answer passes the check, a second one would point elsewhere.
    table, calls = fake_dns
    table["rebind.test"] = [["127.0.0.1"], ["10.9.9.9"]]
    port = srv.server_address[1]
    data = await load_image(f"http://rebind.test:{port}/img/JPEG", PINNED)
    assert data == IMAGES["JPEG"]
    assert calls == ["rebind.test"]  # resolved once, never again for the connect
    assert srv.log[-1] == ("/img/JPEG", f"rebind.test:{port}")  # the Host header survived the pinning


async def test_https_pinning_keeps_sni_and_host(fake_dns):
    table, _ = fake_dns
    table["images.example"] = [["93.184.216.34"]]
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, stream=httpx.ByteStream(IMAGES["GIF"]))
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        assert await load_image("https://images.example/cat.gif", ImageFetchPolicy(), client) == IMAGES["GIF"]
    (request,) = seen
    assert request.url.host == "93.184.216.34" and request.url.scheme == "https"
    assert request.headers["host"] == "images.example"
    assert request.extensions["sni_hostname"] == "images.example"  # certificate checked against the name


async def test_allowed_networks_and_domains(srv, fake_dns):
    table, _ = fake_dns
    table["img.good.test"] = [["127.0.0.1"]]
    table["img.bad.test"] = [["127.0.0.1"]]
    port = srv.server_address[1]
    policy = ImageFetchPolicy(allowed_networks=("127.0.0.1/32",), allowed_domains=("good.test",))
    assert await load_image(f"http://img.good.test:{port}/img/PNG", policy) == IMAGES["PNG"]
    err = await expect_error(f"http://img.bad.test:{port}/img/PNG", policy)
    assert "img.bad.test is not in the list of allowed image domains" in err.message


# ---------------------------------------------------------------------------------------------------
# redirects


async def test_redirect_to_allowed_address_followed(srv):
    assert await load_image(f"{srv.base}/redirect?to={srv.base}/img/GIF", PINNED) == IMAGES["GIF"]
    assert await load_image(f"{srv.base}/redirect?to=/img/PNG", PINNED) == IMAGES["PNG"]  # relative


@pytest.mark.parametrize("target", [
    "http://10.0.0.1/a.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://127.0.0.2:{port}/img/PNG",  # loopback, but outside the one allowed address
    "http://[::1]:{port}/img/PNG",
])
async def test_redirect_to_refused_address_stops_before_connecting(srv, target):
    transport = RecordingTransport()
    target = target.format(port=srv.server_address[1])
    async with httpx.AsyncClient(transport=transport) as client:
        err = await expect_error(f"{srv.base}/redirect?to={target}", PINNED, client)
    assert "private or reserved address" in err.message
    assert [u.host for u in transport.urls] == ["127.0.0.1"]  # only the first hop reached the network


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/a.png", "gopher://127.0.0.1:70/"])
async def test_redirect_to_other_scheme_refused(srv, target):
    err = await expect_error(f"{srv.base}/redirect?to={target}", LOCAL)
    assert "not http(s)" in err.message


async def test_redirect_limits(srv):
    assert await load_image(f"{srv.base}/chain/3", LOCAL) == IMAGES["PNG"]  # exactly max_redirects
    err = await expect_error(f"{srv.base}/chain/4", LOCAL)
    assert "redirected more than 3 times" in err.message
    err = await expect_error(f"{srv.base}/loop", LOCAL)
    assert "redirected in a loop" in err.message and err.code == "too_many_redirects"
    err = await expect_error(f"{srv.base}/chain/1", ImageFetchPolicy(allow_private_addresses=True, max_redirects=0))
    assert "more than 0 times" in err.message


# ---------------------------------------------------------------------------------------------------
# schemes and data URLs


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "FILE:///etc/passwd", "ftp://127.0.0.1/a.png", "gopher://example.com/",
    "javascript:alert(1)", "/etc/passwd", "example.com/a.png",
])
async def test_other_schemes_refused(url, no_resolve):
    err = await expect_error(url, LOCAL)
    assert "is not allowed" in err.message and "use http, https or a base64 data URL" in err.message


@pytest.mark.parametrize("url", ["http://", "http:///a.png", "https://exa mple.com/a.png"])
async def test_malformed_http_urls(url, no_resolve):
    err = await expect_error(url, LOCAL)
    assert err.code == "invalid_image_url"


@pytest.mark.parametrize("fmt, mime", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "image/gif")])
async def test_data_urls_good(fmt, mime):
    b64 = base64.b64encode(IMAGES[fmt]).decode()
    assert await load_image(f"data:{mime};base64,{b64}", ImageFetchPolicy()) == IMAGES[fmt]
    # line-wrapped base64 (as some clients send it) and a lying media type are fine too
    wrapped = "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))
    assert await load_image(f"data:image/webp;base64,{wrapped}", ImageFetchPolicy()) == IMAGES[fmt]


async def test_data_urls_bad():
    secret = base64.b64encode(IMAGES["PNG"]).decode()
    err = await expect_error(f"data:image/png;base64,{secret[:-3]}!!!", ImageFetchPolicy())
    assert "not valid base64" in err.message and secret[:20] not in err.message  # never echo the payload
    err = await expect_error(f"data:image/png,{secret}", ImageFetchPolicy())
    assert "must be base64-encoded" in err.message
    err = await expect_error("data:image/png;base64", ImageFetchPolicy())
    assert "no ','" in err.message
    err = await expect_error(f"data:image/webp;base64,{base64.b64encode(IMAGES['WEBP']).decode()}",
                             ImageFetchPolicy())
    assert "image format WEBP is not supported (from a data URL)" in err.message
    big = base64.b64encode(make_image("PNG", (128, 128))).decode()
    err = await expect_error(f"data:image/png;base64,{big}", ImageFetchPolicy(max_bytes=200))
    assert "larger than the limit of 200 bytes" in err.message and "a data URL" in err.message
