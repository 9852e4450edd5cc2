"""The canvas a GIF needs, read from its frame descriptors without decoding any LZW data.

Pillow reads only the first frame's descriptor when opening, and grows the canvas when a later
frame reaches past the logical screen, so a small-screen GIF can still ask for a huge canvas.
"""

from __future__ import annotations


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    while pos < len(data):
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos
    return len(data)


def _color_table_size(flags: int) -> int:
    return 3 << ((flags & 7) + 1) if flags & 0x80 else 0


def gif_canvas_size(data: bytes) -> tuple[int, int]:
    """(width, height) covering the logical screen and every frame; stops quietly at truncation
    (decoding reports that later)."""
    if len(data) < 13:
        return 0, 0
    width = int.from_bytes(data[6:8], "little")
    height = int.from_bytes(data[8:10], "little")
    pos = 13 + _color_table_size(data[10])
    while pos < len(data):
        block = data[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label byte, then sub-blocks
            pos = _skip_sub_blocks(data, pos + 2)
        elif block == 0x2C:  # image descriptor: left, top, width, height (u16 LE each), flags
            if pos + 10 > len(data):
                break
            left, top, w, h = (int.from_bytes(data[pos + i : pos + i + 2], "little") for i in (1, 3, 5, 7))
            width, height = max(width, left + w), max(height, top + h)
            pos += 10 + _color_table_size(data[pos + 9]) + 1  # + LZW minimum code size
            pos = _skip_sub_blocks(data, pos)
        else:
            break  # garbage: let the decoder judge it
    return width, height
