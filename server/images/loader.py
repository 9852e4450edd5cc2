"""`load_image`: one image URL from a chat request to checked image bytes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import httpx

from server.images.data_url import SOURCE as DATA_URL_SOURCE
from server.images.data_url import decode_data_url
from server.images.fetch import fetch_http, parse_http_url
from server.images.formats import check_image_bytes
from server.images.policy import ImageError, ImageFetchPolicy


async def _load_data_url(url: str, policy: ImageFetchPolicy, client: httpx.AsyncClient | None) -> bytes:
    # Decoding and checking a big image take tens of ms: keep them off the event loop.
    def decode_and_check() -> bytes:
        data = decode_data_url(url, policy)
        check_image_bytes(data, policy, source=DATA_URL_SOURCE)
        return data

    return await asyncio.to_thread(decode_and_check)


async def _load_http(raw: str, policy: ImageFetchPolicy, client: httpx.AsyncClient | None) -> bytes:
    url = parse_http_url(raw)
    try:
        async with asyncio.timeout(policy.timeout_s):  # total: resolving, redirects and every read
            if client is not None:
                data = await fetch_http(url, policy, client)
            else:
                # trust_env=False: no proxy or netrc from the environment may change where we connect.
                async with httpx.AsyncClient(trust_env=False, timeout=policy.timeout_s) as own:
                    data = await fetch_http(url, policy, own)
    except TimeoutError:
        raise ImageError(
            f"image host {url.host} did not deliver the image within {policy.timeout_s:g} s.",
            status_code=504,
            code="image_fetch_timeout",
        ) from None
    await asyncio.to_thread(check_image_bytes, data, policy, source=url.host)
    return data


_LOADERS: dict[str, Callable[[str, ImageFetchPolicy, httpx.AsyncClient | None], Awaitable[bytes]]] = {
    "data": _load_data_url,
    "http": _load_http,
    "https": _load_http,
}


async def load_image(url: str, policy: ImageFetchPolicy, client: httpx.AsyncClient | None = None) -> bytes:
    """The bytes of a GIF, JPEG or PNG image named by an http(s) or base64 data URL.

    Raises ImageError (with the HTTP status to answer) for everything else: other schemes such as
    file:// or ftp://, refused or unresolvable hosts, oversized, slow, corrupt or unsupported images.
    """
    url = url.strip()
    scheme, sep, _ = url.partition(":")
    loader = _LOADERS.get(scheme.lower()) if sep else None
    if loader is None:
        host = urlsplit(url).hostname if sep and scheme.lower() != "data" else None
        where = f" (host {host})" if host else ""
        shown = f"'{scheme.lower()}'" if sep and scheme.isascii() and scheme.isalnum() and len(scheme) < 20 else "given"
        raise ImageError(
            f"image URL scheme {shown} is not allowed{where}; use http, https or a base64 data URL.",
            code="invalid_image_url",
        )
    return await loader(url, policy, client)
