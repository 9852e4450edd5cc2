"""Safe image loading for the OpenAI server: http(s) and base64 data URLs to checked image bytes.

Guards against SSRF (private/loopback/link-local addresses refused on every redirect hop, the
checked address pinned for the connection), slow hosts (one total timeout), big bodies (a byte cap
enforced while streaming) and decompression bombs (a pixel cap read from headers before decoding).
"""

from server.images.formats import check_image_bytes
from server.images.loader import load_image
from server.images.policy import ALLOWED_FORMATS, ImageError, ImageFetchPolicy

__all__ = ["ALLOWED_FORMATS", "ImageError", "ImageFetchPolicy", "check_image_bytes", "load_image"]
