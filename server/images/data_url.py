"""`data:[<media type>][;base64],<data>` image URLs."""

from __future__ import annotations

import base64
import binascii
import re

from server.images.policy import ImageError, ImageFetchPolicy

SOURCE = "a data URL"  # what error messages name instead of echoing the (huge) URL
_WHITESPACE = re.compile(rb"\s+")


def decode_data_url(url: str, policy: ImageFetchPolicy) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep:
        raise ImageError("image data URL has no ',' separating its header from its data.")
    params = [p.strip().lower() for p in header[len("data:") :].split(";")]
    if "base64" not in params[1:]:
        raise ImageError("image data URL must be base64-encoded (data:image/png;base64,...).")
    # The declared media type is ignored on purpose: the format is judged from the bytes.
    # Reject before decoding when even the shortest reading of the payload is over the cap.
    if (len(payload) - payload.count("\n") - payload.count("\r")) // 4 * 3 - 2 > policy.max_bytes:
        raise ImageError(
            f"image in {SOURCE} is larger than the limit of {policy.max_bytes} bytes.", code="image_too_large"
        )
    try:
        data = base64.b64decode(_WHITESPACE.sub(b"", payload.encode("ascii")), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ImageError(f"image in {SOURCE} is not valid base64.") from None
    if len(data) > policy.max_bytes:
        raise ImageError(
            f"image in {SOURCE} is larger than the limit of {policy.max_bytes} bytes.", code="image_too_large"
        )
    if not data:
        raise ImageError(f"image in {SOURCE} is empty.")
    return data
