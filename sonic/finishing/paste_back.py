"""Paste-back: composite the generated crop into the original photo with a feathered edge."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ..errors import ParameterError
from .arrays import as_frames, as_image


def even_size(height: int, width: int) -> tuple[int, int]:
    """Largest even (height, width) not above the given one: H.264 yuv420p needs even sides."""
    return height // 2 * 2, width // 2 * 2


def paste_back(frames, original_image, crop_box, *, feather_px: int = 24) -> torch.Tensor:
    """Composite the generated crop into the original photo; returns `[T, H0', W0', 3]`.

    The frames are resized to the crop box and blended over `feather_px` pixels at the box
    edges that lie inside the photo (edges on the photo border need no blend). Pixels outside
    the box are exactly the original photo's. The size is the photo's, rounded down to even
    (last row/column dropped), as `sonic.media.video.write_mp4` requires.
    """
    return torch.cat(list(iter_paste_back(frames, original_image, crop_box, feather_px=feather_px)))


def iter_paste_back(frames, original_image, crop_box, *, feather_px: int = 24, chunk: int = 16) -> Iterator[torch.Tensor]:
    """`paste_back` as chunks of `chunk` frames: full-resolution frames never all in memory.

    Arguments are checked when this is called, not when the first chunk is requested.
    """
    import cv2

    frames = as_frames(frames, "frames")
    original = as_image(original_image)
    full_height, full_width = original.shape[:2]
    out_height, out_width = even_size(full_height, full_width)
    original = original[:out_height, :out_width]
    x1, y1, x2, y2 = _check_crop_box(crop_box, full_width, full_height)
    if not isinstance(feather_px, int) or feather_px < 0:
        raise ParameterError(f"feather_px must be a non-negative integer, got {feather_px!r}")
    box_w, box_h = x2 - x1, y2 - y1
    # the part of the box that survives the even-size crop
    keep_w, keep_h = min(x2, out_width) - x1, min(y2, out_height) - y1
    mask = _feather_mask(box_h, box_w, feather_px, open_sides=(x1 == 0, y1 == 0, x2 == full_width, y2 == full_height))
    mask = mask[:keep_h, :keep_w, None]
    background = original[y1:y1 + keep_h, x1:x1 + keep_w]

    def generate() -> Iterator[torch.Tensor]:
        for start in range(0, frames.shape[0], chunk):
            part = frames[start:start + chunk].numpy()
            out = np.broadcast_to(original, (part.shape[0],) + original.shape).copy()
            for index, frame in enumerate(part):
                shrinking = box_w < frame.shape[1]
                resized = cv2.resize(frame, (box_w, box_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
                resized = np.clip(resized[:keep_h, :keep_w], 0, 1)
                out[index, y1:y1 + keep_h, x1:x1 + keep_w] = background + mask * (resized - background)
            yield torch.from_numpy(out)

    return generate()


def _check_crop_box(crop_box, width: int, height: int) -> tuple[int, int, int, int]:
    try:
        x1, y1, x2, y2 = (int(round(float(v))) for v in crop_box)
    except (TypeError, ValueError):
        raise ParameterError(f"crop_box must be four numbers x1, y1, x2, y2 in pixels, got {crop_box!r}") from None
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise ParameterError(f"crop_box {crop_box} must lie inside the {width}x{height} photo "
                             f"with x1 < x2 and y1 < y2")
    return x1, y1, x2, y2


def _feather_mask(height: int, width: int, feather: int, *, open_sides=(False, False, False, False)) -> np.ndarray:
    """1 inside, smooth ramp to 0 over `feather` px at each closed side (left, top, right, bottom)."""
    def ramp(size: int, open_start: bool, open_end: bool) -> np.ndarray:
        position = np.arange(size, dtype=np.float32) + 0.5
        values = np.ones(size, np.float32)
        if feather > 0:
            if not open_start:
                values = np.minimum(values, position / feather)
            if not open_end:
                values = np.minimum(values, (size - position) / feather)
        values = np.clip(values, 0, 1)
        return values * values * (3 - 2 * values)  # smoothstep: no visible kink at the ends

    left, top, right, bottom = open_sides
    return np.outer(ramp(height, top, bottom), ramp(width, left, right)).astype(np.float32)


def box_mask(height: int, width: int, box, *, feather: int) -> np.ndarray:
    """A feathered mask of `box` inside an `[height, width]` frame (1 in the box)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    mask = np.zeros((height, width), np.float32)
    x1, y1 = max(0, x1 - feather), max(0, y1 - feather)
    x2, y2 = min(width, x2 + feather), min(height, y2 + feather)
    if x2 > x1 and y2 > y1:
        mask[y1:y2, x1:x2] = _feather_mask(y2 - y1, x2 - x1, feather)
    return mask
