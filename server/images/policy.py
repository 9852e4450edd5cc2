"""The knobs of image loading and the one error type it raises."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

ALLOWED_FORMATS = ("GIF", "JPEG", "PNG")
# What users read in errors: JPG is listed because people say JPG, and Pillow calls it JPEG.
ALLOWED_FORMATS_TEXT = "GIF, JPG, JPEG or PNG"


@dataclass(frozen=True)
class ImageFetchPolicy:
    timeout_s: float = 5.0  # whole fetch, redirects included (not per read)
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000  # decompression-bomb guard, checked from headers before decoding
    max_redirects: int = 3
    # Loopback/private/link-local/reserved/multicast addresses are refused unless this is set
    # (tests set it for their local image server).
    allow_private_addresses: bool = False
    # CIDRs allowed even when not public, e.g. an internal image store ("10.1.2.0/24"); narrower
    # than allow_private_addresses.
    allowed_networks: tuple[str, ...] = ()
    # When non-empty, only these hosts and their subdomains may be fetched from.
    allowed_domains: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.max_bytes <= 0 or self.max_pixels <= 0 or self.max_redirects < 0:
            raise ValueError(f"invalid ImageFetchPolicy limits: {self}")
        for net in self.allowed_networks:
            ipaddress.ip_network(net, strict=False)  # fail at startup, not on the first request


class ImageError(Exception):
    """A refused or failed image; `status_code` is what the HTTP layer should answer.

    400: anything the client must fix (bad URL, refused host, too big, wrong format, the image host
    answered 4xx or could not be reached). 502: the image host answered 5xx. 504: the image host did
    not deliver within the timeout. 5xx because the fault is upstream and a retry may well succeed
    (the OpenAI SDK retries 5xx, which is the right reaction to a slow or failing image host; a 400
    would tell the client its request is wrong when it is not).
    """

    def __init__(self, message: str, status_code: int = 400, code: str | None = "invalid_image") -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code  # for the OpenAI envelope's `code` field
