"""Frame-rate conversion of a finished clip."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ParameterError
from .arrays import as_frames


def convert_fps(frames, fps_in: float, fps_out: float, *, method: str = "nearest") -> torch.Tensor:
    """Resample a clip in time, keeping its duration: `round(T * fps_out / fps_in)` frames.

    Output frame k shows the moment `(k + 0.5) / fps_out` s (frame centres line up); "nearest"
    repeats or drops source frames (the mouth stays sharp), "blend" cross-fades the two
    source frames around that moment.
    """
    frames = as_frames(frames, "frames")
    for name, value in (("fps_in", fps_in), ("fps_out", fps_out)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value <= 240:
            raise ParameterError(f"{name} must be a frame rate in (0, 240], got {value!r}")
    if method not in ("nearest", "blend"):
        raise ParameterError(f"method must be 'nearest' or 'blend', got {method!r}")
    count = frames.shape[0]
    out_count = max(1, int(round(count * fps_out / fps_in)))
    position = (np.arange(out_count) + 0.5) * fps_in / fps_out - 0.5  # in source frame indices
    position = np.clip(position, 0, count - 1)
    if method == "nearest":
        return frames[torch.from_numpy(np.floor(position + 0.5).astype(np.int64))].clone()
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, count - 1)
    fraction = torch.from_numpy((position - low).astype(np.float32))[:, None, None, None]
    output = torch.empty((out_count,) + tuple(frames.shape[1:]), dtype=frames.dtype)
    for start in range(0, out_count, 32):  # in chunks: never two extra full copies
        part = slice(start, start + 32)
        output[part] = torch.lerp(frames[torch.from_numpy(low[part])], frames[torch.from_numpy(high[part])], fraction[part])
    return output
