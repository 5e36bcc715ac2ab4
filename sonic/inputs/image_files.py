"""Picture files that lie: a PNG whose header promises more rows than its data holds.

Pillow decodes such a PNG without complaint and fills the missing rows with black, so a
portrait with its lower half missing would quietly become a video. `check_png_complete`
inflates the image data once (streamed, output discarded: memory stays small) and compares the
byte count with what the header's size, colour type, bit depth and interlacing require.
JPEG, WebP and the other formats Pillow reads already fail on truncated data.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from ..errors import ImageError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
# Adam7 passes: (first column, first row, column step, row step)
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_INFLATE_STEP = 1 << 20  # bytes of inflated data held at a time


def png_raw_size(width: int, height: int, colour_type: int, bit_depth: int, interlaced: bool) -> int:
    """Bytes of filtered scanlines (one filter byte per row) the IDAT stream must inflate to."""
    bits = _CHANNELS.get(colour_type, 4) * bit_depth
    passes = _ADAM7 if interlaced else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        columns = (width - x0 + dx - 1) // dx if width > x0 else 0
        rows = (height - y0 + dy - 1) // dy if height > y0 else 0
        if columns and rows:
            total += rows * (1 + (columns * bits + 7) // 8)
    return total


def check_png_complete(path: Path, what: str) -> None:
    """`ImageError` when a PNG file's image data is shorter than its header promises (no-op for other files)."""
    with open(path, "rb") as handle:
        if handle.read(8) != PNG_SIGNATURE:
            return
        header = None
        inflater = zlib.decompressobj()
        produced = 0
        while True:
            head = handle.read(8)
            if len(head) < 8:
                break  # no IEND: Pillow reports that, or the count below does
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IHDR":
                body = handle.read(length)
                if len(body) < 13:
                    return  # Pillow's own error is clearer
                width, height, bit_depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", body[:13])
                header = (width, height, colour_type, bit_depth, interlace == 1)
                handle.seek(4, 1)
            elif kind == b"IDAT":
                remaining = length
                while remaining > 0 and not inflater.eof:
                    data = handle.read(min(remaining, _INFLATE_STEP))
                    if not data:
                        break
                    remaining -= len(data)
                    produced += _inflate_count(inflater, data)
                handle.seek(remaining + 4, 1)
            elif kind == b"IEND":
                break
            else:
                handle.seek(length + 4, 1)
        produced += len(inflater.flush())
    if header is None:
        return
    expected = png_raw_size(*header)
    if produced < expected:
        width, height = header[:2]
        raise ImageError(f"{what} is damaged or truncated: its header promises {width}x{height} pixels but its "
                         f"data holds only about {height * produced // max(expected, 1)} of {height} rows; "
                         f"export or download the picture again")


def _inflate_count(inflater, data: bytes) -> int:
    """Inflate `data`, discarding the output in bounded pieces; returns the number of bytes produced."""
    count = 0
    try:
        out = inflater.decompress(data, _INFLATE_STEP)
        count += len(out)
        while inflater.unconsumed_tail and not inflater.eof:
            out = inflater.decompress(inflater.unconsumed_tail, _INFLATE_STEP)
            count += len(out)
    except zlib.error:
        pass  # corrupt data: the count stays short, or Pillow reports it
    return count
