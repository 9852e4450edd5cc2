"""Judging image bytes by their content: format, pixel count, integrity."""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from server.images.gif_frames import gif_canvas_size
from server.images.policy import ALLOWED_FORMATS, ALLOWED_FORMATS_TEXT, ImageError, ImageFetchPolicy

# Errors Pillow raises on malformed input (SyntaxError is how its plugins report a bad header).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, Image.DecompressionBombError)


def _check_pixels(width: int, height: int, policy: ImageFetchPolicy, origin: str) -> None:
    if width * height > policy.max_pixels:
        raise ImageError(
            f"image {origin} is {width}x{height} pixels, more than the limit of {policy.max_pixels} pixels.",
            code="image_too_large",
        )


def check_image_bytes(data: bytes, policy: ImageFetchPolicy, *, source: str | None = None) -> str:
    """The format ('GIF', 'JPEG' or 'PNG') of `data`, after checking size, pixels and integrity.

    `source` (the URL's host, or "a data URL") is named in error messages. The pixel count comes
    from the headers before anything is decoded; only then is the image verified and decoded once,
    so that a truncated or corrupt file is a 400 here rather than a failure deep in preprocessing.
    """
    origin = f"from {source}" if source else "data"
    if len(data) > policy.max_bytes:
        raise ImageError(
            f"image {origin} is larger than the limit of {policy.max_bytes} bytes.", code="image_too_large"
        )
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads headers only
            fmt = im.format or "unknown"
            size = im.size
    except Image.DecompressionBombError:
        # Pillow's own guard (above ~179M pixels) fires inside open(), before our check can run.
        raise ImageError(
            f"image {origin} has more pixels than the limit of {policy.max_pixels}.", code="image_too_large"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(
            f"image {origin} is not in a recognised image format; use {ALLOWED_FORMATS_TEXT}.",
            code="unsupported_image_format",
        ) from None
    except _DECODE_ERRORS:
        raise ImageError(f"image {origin} has a corrupt header.") from None
    if fmt not in ALLOWED_FORMATS:
        raise ImageError(
            f"image format {fmt} is not supported ({origin}); use {ALLOWED_FORMATS_TEXT}.",
            code="unsupported_image_format",
        )
    _check_pixels(*size, policy, origin)
    if fmt == "GIF":
        _check_pixels(*gif_canvas_size(data), policy, origin)
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            im.verify()  # chunk CRCs and structure, without decoding pixels
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:  # verify() leaves an image unusable
            im.load()
    except _DECODE_ERRORS:
        raise ImageError(f"image {origin} is corrupt or truncated ({fmt}).") from None
    return fmt
