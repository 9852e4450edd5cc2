"""Safe image loading, what comes back: formats judged by content, pixel and byte caps, timeouts,
upstream errors. A real local HTTP server, real Pillow images, real httpx."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

import server.images.addresses as addresses
from server.images import ImageError, ImageFetchPolicy, check_image_bytes, load_image
from tests.unit.images.conftest import IMAGES, LOCAL, expect_error, gif_with_huge_second_frame, make_image, png_claiming

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
    err = await expect_error(
        f"{srv.base}/hang", ImageFetchPolicy(allow_private_addresses=True, timeout_s=0.3), status=504
    )
    assert "within 0.3 s" in err.message and "127.0.0.1" in err.message
    assert time.monotonic() - t0 < 1.0


async def test_timeout_is_total_not_per_read(srv):
    # every read succeeds within 50 ms; only a budget for the whole fetch can stop it
    t0 = time.monotonic()
    await expect_error(f"{srv.base}/dribble", ImageFetchPolicy(allow_private_addresses=True, timeout_s=0.4), status=504)
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
