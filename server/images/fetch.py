"""Fetching an image over http(s): redirects by hand, every hop's addresses checked and pinned.

DNS rebinding: each hop's host is resolved once, every address is checked, and the connection goes
to a checked address (the URL's host swapped for the IP) with the original Host header and, for
https, the original name as SNI and for certificate checks. The name is never resolved again, so a
second, different DNS answer cannot slip a private address in between the check and the connect.
What remains: a caller-supplied client that is configured with a proxy sends the request to the
proxy, which resolves nothing (it gets the IP) but is itself trusted; and httpcore pools
connections by IP, so pinned https requests ask for `Connection: close` to keep a TLS connection
made for one name from carrying a request for another name on the same IP.
"""

from __future__ import annotations

import re

import httpx

from server.images.addresses import check_domain, parse_ip_literal, resolve_checked
from server.images.policy import ImageError, ImageFetchPolicy

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A DNS name (after IDNA), so that nothing odd (percent signs, spaces) ever reaches the resolver.
_HOSTNAME = re.compile(
    r"^(?=.{1,253}\.?$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.?$"
)


def _pinned_request(url: httpx.URL, address: str) -> tuple[httpx.URL, dict[str, str], dict[str, object]]:
    """The URL to send (host replaced by the checked IP), its headers and httpcore extensions."""
    headers = {"Accept-Encoding": "identity"}  # raw bytes: the cap counts what arrives, no gzip bombs
    if parse_ip_literal(url.host) is not None:
        return url, headers, {}
    headers["Host"] = url.netloc.decode("ascii")
    extensions: dict[str, object] = {}
    if url.scheme == "https":
        extensions["sni_hostname"] = url.host  # also the name the certificate is checked against
        headers["Connection"] = "close"
    return url.copy_with(host=address), headers, extensions


async def _read_capped(response: httpx.Response, host: str, policy: ImageFetchPolicy) -> bytes:
    too_large = ImageError(
        f"image from {host} is larger than the limit of {policy.max_bytes} bytes.", code="image_too_large"
    )
    declared = response.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > policy.max_bytes:
        raise too_large  # announced: refuse before reading any of the body
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ImageError(f"image from {host} was sent with content-encoding {encoding}; send it uncompressed.")
    chunks: list[bytes] = []
    received = 0
    async for chunk in response.aiter_raw():
        received += len(chunk)
        if received > policy.max_bytes:
            raise too_large  # leaving the stream context closes the connection mid-body
        chunks.append(chunk)
    return b"".join(chunks)


async def _fetch_hop(url: httpx.URL, policy: ImageFetchPolicy, client: httpx.AsyncClient) -> bytes | httpx.URL:
    """The body, or the next URL when the answer is a redirect."""
    host = url.host
    check_domain(host, policy)
    addresses = await resolve_checked(host, url.port or _DEFAULT_PORTS[url.scheme], policy)
    for address in addresses:  # in resolver order, falling back on connect failures only
        target, headers, extensions = _pinned_request(url, address)
        try:
            async with client.stream(
                "GET", target, headers=headers, extensions=extensions, follow_redirects=False, timeout=policy.timeout_s
            ) as response:
                status = response.status_code
                if status in _REDIRECT_STATUSES:
                    location = response.headers.get("location")
                    if not location:
                        raise ImageError(
                            f"image host {host} answered a redirect without a Location.", code="image_fetch_failed"
                        )
                    return url.join(location)
                if status >= 500:
                    raise ImageError(
                        f"image host {host} answered HTTP {status}.", status_code=502, code="image_fetch_failed"
                    )
                if not 200 <= status < 300:
                    raise ImageError(f"image host {host} answered HTTP {status}.", code="image_fetch_failed")
                return await _read_capped(response, host, policy)
        except httpx.ConnectError:
            continue
        except httpx.TimeoutException:
            raise ImageError(
                f"image host {host} did not deliver the image within {policy.timeout_s:g} s.",
                status_code=504,
                code="image_fetch_timeout",
            ) from None
        except httpx.InvalidURL:
            raise ImageError(f"image URL for host {host} is not a valid URL.", code="invalid_image_url") from None
        except httpx.HTTPError as exc:
            raise ImageError(
                f"image host {host} broke off the transfer ({type(exc).__name__}).", code="image_fetch_failed"
            ) from None
    raise ImageError(f"image host {host} could not be connected to.", code="image_fetch_failed")


def parse_http_url(raw: str) -> httpx.URL:
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise ImageError("image URL is not a valid http(s) URL.", code="invalid_image_url") from None
    if url.scheme not in _DEFAULT_PORTS or not url.host:
        raise ImageError("image URL is not a valid http(s) URL with a host.", code="invalid_image_url")
    host = url.raw_host.decode("ascii").lower()
    if parse_ip_literal(url.host) is None and not _HOSTNAME.match(host):
        raise ImageError("image URL has an invalid host name.", code="invalid_image_url")
    return url


async def fetch_http(url: httpx.URL, policy: ImageFetchPolicy, client: httpx.AsyncClient) -> bytes:
    """Follows at most `policy.max_redirects` redirects; the caller bounds the total time."""
    seen = {str(url)}
    for _ in range(policy.max_redirects + 1):
        result = await _fetch_hop(url, policy, client)
        if isinstance(result, bytes):
            return result
        if result.scheme not in _DEFAULT_PORTS or not result.host:
            raise ImageError(
                f"image host {url.host} redirected to a URL that is not http(s), which is not allowed.",
                code="invalid_image_url",
            )
        try:
            result = parse_http_url(str(result))
        except ImageError:
            raise ImageError(f"image host {url.host} redirected to an invalid URL.", code="invalid_image_url") from None
        if str(result) in seen:
            raise ImageError(f"image host {url.host} redirected in a loop.", code="too_many_redirects")
        seen.add(str(result))
        url = result
    raise ImageError(
        f"image host {url.host} redirected more than {policy.max_redirects} times.", code="too_many_redirects"
    )
