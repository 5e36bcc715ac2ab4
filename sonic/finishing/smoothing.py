"""Motion smoothing: a temporal filter against frame-to-frame jitter, and its flicker measure."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ParameterError
from .arrays import as_frames
from .paste_back import box_mask

DEFAULT_SMOOTHING_STRENGTH = 0.5  # the value the UI offers when smoothing is switched on


def smooth_motion(frames, strength: float = DEFAULT_SMOOTHING_STRENGTH, *, mouth_box=None) -> torch.Tensor:
    """Remove frame-to-frame jitter without smearing the mouth.

    1. Stabilise: the whole frame's shift between consecutive frames (phase correlation) is
       summed into a trajectory; each frame is moved onto a Gaussian-smoothed version of it
       (sigma = 0.5 + 3 * strength frames), which keeps slow head motion and removes shake.
    2. Denoise in time: a Gaussian over neighbouring frames (sigma = 1.5 * strength frames),
       applied fully outside the mouth box, not at all inside it (feathered), and faded out
       per pixel where the change is large (real motion such as blinks stays sharp).

    strength: 0 = return the input unchanged; 1 = strongest. mouth_box: `(x1, y1, x2, y2)` in
    frame pixels (default: the face OpenCV finds; none found = no mouth protection).
    """
    import cv2
    from scipy.ndimage import gaussian_filter1d

    frames = as_frames(frames, "frames")
    if not 0 <= strength <= 1:
        raise ParameterError(f"smoothing strength must be between 0 and 1, got {strength!r}")
    count, height, width = frames.shape[:3]
    if strength == 0 or count < 3:
        return frames.clone()
    if mouth_box is None:
        mouth_box = _guess_mouth_box(frames)

    # 1. trajectory of global shifts (on a small grey copy: fast and robust)
    scale = min(1.0, 256 / max(height, width))
    small = (max(8, round(width * scale)), max(8, round(height * scale)))
    window = cv2.createHanningWindow(small, cv2.CV_32F)
    trajectory = np.zeros((count, 2))
    previous = None
    for t in range(count):
        grey = cv2.resize(cv2.cvtColor(frames[t].numpy(), cv2.COLOR_RGB2GRAY), small, interpolation=cv2.INTER_AREA)
        if previous is not None:
            (dx, dy), _ = cv2.phaseCorrelate(previous, grey, window)
            trajectory[t] = trajectory[t - 1] + np.array([dx, dy]) / scale
        previous = grey
    corrections = gaussian_filter1d(trajectory, 0.5 + 3 * strength, axis=0, mode="nearest") - trajectory

    def stabilised(t: int) -> np.ndarray:
        frame = frames[t].numpy()
        dx, dy = corrections[t]
        if abs(dx) < 0.05 and abs(dy) < 0.05:
            return frame
        matrix = np.float32([[1, 0, dx], [0, 1, dy]])
        return cv2.warpAffine(frame, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

    # 2. temporal Gaussian over a sliding window of stabilised frames
    sigma = 1.5 * strength
    radius = max(1, math.ceil(2 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    weight_map = (1.0 - box_mask(height, width, mouth_box, feather=max(2, (mouth_box[2] - mouth_box[0]) // 4))
                  if mouth_box else np.ones((height, width), np.float32))
    weight_map = cv2.merge([weight_map, weight_map, weight_map])
    motion_scale = 0.08  # grey change (0..1 scale) at which temporal averaging fades out: real motion
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # frame index -> (stabilised RGB, its grey)
    output = torch.empty_like(frames)
    for t in range(count):
        for k in range(max(0, t - radius), min(count, t + radius + 1)):
            if k not in cache:
                rgb = stabilised(k)
                cache[k] = rgb, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        for k in [k for k in cache if k < t - radius]:
            del cache[k]
        centre, centre_grey = cache[t]
        # cv2 for the per-pixel weighting: numpy/torch broadcasting over channels is ~10x slower
        total = centre * np.float32(taps[radius])
        norm = np.full(centre.shape[:2], taps[radius], np.float32)
        for offset, tap in zip(range(-radius, radius + 1), taps):
            k = t + offset
            if offset == 0 or not 0 <= k < count:
                continue
            neighbour, neighbour_grey = cache[k]
            difference = cv2.absdiff(neighbour_grey, centre_grey)
            weight = np.exp(cv2.multiply(difference, difference, scale=-1.0 / motion_scale**2)) * np.float32(tap)
            cv2.accumulateProduct(neighbour, cv2.merge([weight, weight, weight]), total)
            norm += weight
        averaged = total / cv2.merge([norm, norm, norm])
        output[t] = torch.from_numpy(centre + weight_map * (averaged - centre))
    return output.clamp_(0, 1)


def _guess_mouth_box(frames: torch.Tensor):
    from ..errors import FaceNotFoundError
    from ..sync.measure import _analysis_frames, detect_face_box
    from ..sync.measure import mouth_box_from_face as mouth_box_from_haar_face

    picks = frames[:: max(1, frames.shape[0] // 8)]
    grey, scale = _analysis_frames(picks)
    try:
        face = detect_face_box(grey)
    except FaceNotFoundError:
        return None
    box = mouth_box_from_haar_face(face, grey.shape[2], grey.shape[1])
    return tuple(int(round(v / scale)) for v in box)


def mouth_box_from_portrait_face(face_box, width: int, height: int) -> tuple[int, int, int, int]:
    """Mouth region of a full face box (forehead to chin, as Sonic's detector gives): the middle
    60 % of its width, 45-100 % of its height (generous: lips move up and down), clipped."""
    x1, y1, x2, y2 = (float(v) for v in face_box)
    w, h = x2 - x1, y2 - y1
    box = (int(round(max(0, x1 + 0.2 * w))), int(round(max(0, y1 + 0.45 * h))),
           int(round(min(width, x2 - 0.2 * w))), int(round(min(height, y2))))
    if box[2] - box[0] < 2 or box[3] - box[1] < 2:
        raise ParameterError(f"face_box_in_crop {face_box} leaves no mouth region inside a {width}x{height} frame")
    return box


def flicker_statistic(frames, box=None) -> float:
    """Mean |I_t - I_{t-1}| (0..1 scale) over the clip, inside `box` or the whole frame (EVALUATION 3.3)."""
    frames = as_frames(frames, "frames")
    if box is not None:
        x1, y1, x2, y2 = box
        frames = frames[:, y1:y2, x1:x2].contiguous()
    if frames.shape[0] < 2:
        return 0.0
    import cv2

    total = 0.0
    for t in range(1, frames.shape[0]):  # frame by frame: no clip-sized temporary
        total += float(np.mean(cv2.mean(cv2.absdiff(frames[t].numpy(), frames[t - 1].numpy()))[:3]))
    return total / (frames.shape[0] - 1)
