"""Safe image loading, where it may go: refused addresses never see a request (literal ones are not
even resolved), every redirect hop is re-checked, only http(s) and data URLs."""

from __future__ import annotations

import base64
import ipaddress

import httpx
import pytest

from server.images import ImageFetchPolicy, load_image
from server.images.addresses import is_address_allowed
from tests.unit.images.conftest import IMAGES, LOCAL, PINNED, RecordingTransport, expect_error, make_image

# ---------------------------------------------------------------------------------------------------
# addresses: refused ones see no traffic


async def test_loopback_refused_by_default_and_allowed_when_set(srv):
    before = len(srv.log)
    err = await expect_error(f"{srv.base}/img/PNG", ImageFetchPolicy())
    assert "127.0.0.1 is a private or reserved address" in err.message
    assert err.code == "image_host_not_allowed"
    assert len(srv.log) == before  # the server never saw it
    assert await load_image(f"{srv.base}/img/PNG", ImageFetchPolicy(allow_private_addresses=True)) == IMAGES["PNG"]


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:8080/a.png",
        "http://0.0.0.0/a.png",
        "http://192.168.0.1/a.png",
        "http://100.64.0.1/a.png",  # carrier-grade NAT
        "http://[fe80::1]/a.png",
        "http://[::ffff:127.0.0.1]/a.png",  # IPv4-mapped loopback
        "http://[::ffff:a9fe:a9fe]/a.png",  # IPv4-mapped metadata address
        "https://224.0.0.1/a.png",  # multicast
        "http://[fd00::1]/a.png",
    ],
)
async def test_private_literals_refused_without_any_traffic(url, no_resolve):
    sent: list[httpx.Request] = []
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(200)))
    async with client:
        err = await expect_error(url, ImageFetchPolicy(), client)
    assert sent == [] and "is a private or reserved address" in err.message


@pytest.mark.parametrize(
    "address, allowed",
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("93.184.216.34", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("169.254.169.254", False),
        ("0.0.0.0", False),
        ("255.255.255.255", False),
        ("192.0.2.1", False),
        ("198.18.0.1", False),
        ("::", False),
        ("::1", False),
        ("fec0::1", False),
        ("ff02::1", False),
        ("2002:7f00:1::", False),
        ("2002:0808:0808::", True),  # 6to4 judged by the IPv4 inside
        ("64:ff9b::a00:1", False),  # NAT64 to 10.0.0.1
    ],
)
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


@pytest.mark.parametrize(
    "target",
    [
        "http://10.0.0.1/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.2:{port}/img/PNG",  # loopback, but outside the one allowed address
        "http://[::1]:{port}/img/PNG",
    ],
)
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


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "FILE:///etc/passwd",
        "ftp://127.0.0.1/a.png",
        "gopher://example.com/",
        "javascript:alert(1)",
        "/etc/passwd",
        "example.com/a.png",
    ],
)
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
    wrapped = "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))
    assert await load_image(f"data:image/webp;base64,{wrapped}", ImageFetchPolicy()) == IMAGES[fmt]


async def test_data_urls_bad():
    secret = base64.b64encode(IMAGES["PNG"]).decode()
    err = await expect_error(f"data:image/png;base64,{secret[:-3]}!!!", ImageFetchPolicy())
    assert "not valid base64" in err.message and secret[:20] not in err.message  # never echo the payload
    err = await expect_error(f"data:image/png,{secret}", ImageFetchPolicy())
    assert "must be base64-encoded" in err.message
    err = await expect_error("data:image/png;base64", ImageFetchPolicy())
    assert "no ','" in err.message
    err = await expect_error(f"data:image/webp;base64,{base64.b64encode(IMAGES['WEBP']).decode()}", ImageFetchPolicy())
    assert "image format WEBP is not supported (from a data URL)" in err.message
    big = base64.b64encode(make_image("PNG", (128, 128))).decode()
    err = await expect_error(f"data:image/png;base64,{big}", ImageFetchPolicy(max_bytes=200))
    assert "larger than the limit of 200 bytes" in err.message and "a data URL" in err.message
