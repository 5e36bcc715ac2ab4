"""Colour match: keep the face's colour statistics on the reference crop."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ParameterError
from .arrays import as_frames, as_image, box_slices


def match_colour(frames, reference, *, face_box=None, strength: float = 1.0, smooth_frames: float = 12.0) -> torch.Tensor:
    """Pull each frame's colour back to the reference crop's (Lab mean and spread in the face box).

    Per-frame Lab statistics are smoothed over time (Gaussian, `smooth_frames` sigma) so only
    slow drift is corrected, not the mouth opening; the spread ratio is limited to 0.5..2.
    reference: `[H, W, 3]` image (resized to the frame size if needed).
    """
    import cv2
    from scipy.ndimage import gaussian_filter1d

    frames = as_frames(frames, "frames")
    if not 0 <= strength <= 1:
        raise ParameterError(f"colour-match strength must be between 0 and 1, got {strength!r}")
    count, height, width = frames.shape[:3]
    reference = as_image(reference)
    if reference.shape[:2] != (height, width):
        reference = cv2.resize(reference, (width, height), interpolation=cv2.INTER_AREA)
    region = box_slices(face_box, width, height)
    ref_mean, ref_std = _lab_stats(reference, region)

    stats = np.array([_lab_stats(frames[t].numpy(), region) for t in range(count)])  # [T, 2, 3]
    if count > 1:
        stats = gaussian_filter1d(stats, smooth_frames, axis=0, mode="nearest")
    output = torch.empty_like(frames)
    for t in range(count):
        mean, std = stats[t]
        gain = np.clip(ref_std / std, 0.5, 2.0)
        # lab + strength * ((lab - mean) * gain + ref_mean - lab), as one affine map per channel
        scale = 1 + strength * (gain - 1)
        offset = strength * (ref_mean - mean * gain)
        matrix = np.hstack([np.diag(scale), offset[:, None]]).astype(np.float32)
        lab = cv2.transform(cv2.cvtColor(frames[t].numpy(), cv2.COLOR_RGB2Lab), matrix)
        output[t] = torch.from_numpy(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB))
    return output.clamp_(0, 1)


def _lab_stats(image: np.ndarray, region) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel Lab mean and standard deviation (+1e-3) of `image[region]`."""
    import cv2

    mean, std = cv2.meanStdDev(cv2.cvtColor(np.ascontiguousarray(image[region]), cv2.COLOR_RGB2Lab))
    return mean.ravel(), std.ravel() + 1e-3


def mean_lab(image, box=None) -> np.ndarray:
    """Mean Lab colour (L 0-100, a/b about -128..127) of an `[H, W, 3]` image inside `box`."""
    import cv2

    image = as_image(image)
    return cv2.cvtColor(image, cv2.COLOR_RGB2Lab)[box_slices(box, image.shape[1], image.shape[0])].reshape(-1, 3).mean(axis=0)
