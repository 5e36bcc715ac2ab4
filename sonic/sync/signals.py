"""Per-frame signals of lip-sync measurement: grey analysis frames, audio loudness, mouth motion.

Every signal is computed frame by frame from an iterator, so memory stays flat in the video length
(`mouth_motions`); the array forms (`_analysis_frames`, `mouth_motion`) serve callers that hold frames."""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from ..errors import AudioError, ParameterError

ANALYSIS_HEIGHT = 360  # px: frames are analysed at most this tall (speed; a mouth stays > 20 px)


def _as_numpy(values) -> np.ndarray:
    """numpy view of a numpy array or torch tensor, without importing torch (slow to import)."""
    if type(values).__module__.startswith("torch"):
        values = values.detach().cpu()
        values = (values.float() if values.dtype.is_floating_point else values).numpy()  # bf16 has no numpy
    return np.asarray(values)


def _analysis_frames(frames) -> tuple[np.ndarray, float]:
    """Grey float32 `[T, h, w]` at most ANALYSIS_HEIGHT tall, and the scale applied."""
    frames = _as_numpy(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ParameterError(f"frames must be [T, H, W, 3] (RGB), got shape {tuple(frames.shape)}")
    scale, size = analysis_size(*frames.shape[1:3])
    grey = np.empty((frames.shape[0], size[1], size[0]), np.float32)
    for index, frame in enumerate(grey_frames(frames, scale, size)):
        grey[index] = frame
    return grey, scale


def audio_loudness(audio, sample_rate: int, fps: float, frame_count: int, *, smooth: bool = True) -> np.ndarray:
    """RMS of the audio over each frame's 1/fps seconds (mono mix), by default 3-frame averaged."""
    if audio is None:
        raise AudioError("the video has no audio track; lip-sync needs the soundtrack")
    audio = _as_numpy(audio).astype(np.float32, copy=False)
    if audio.ndim == 2:
        audio = audio.mean(axis=0)
    if audio.ndim != 1 or audio.size == 0:
        raise AudioError(f"audio must be [channels, samples] with samples, got shape {np.shape(audio)}")
    if not sample_rate or sample_rate <= 0:
        raise ParameterError(f"sample_rate must be a positive number of Hz, got {sample_rate!r}")
    edges = np.round(np.arange(frame_count + 1) * sample_rate / fps).astype(np.int64)
    squared = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    edges = np.clip(edges, 0, audio.size)
    lengths = np.maximum(edges[1:] - edges[:-1], 1)
    rms = np.sqrt((squared[edges[1:]] - squared[edges[:-1]]) / lengths)
    if rms.max() <= 1e-6:
        raise AudioError("the audio track is silent; lip-sync needs audible speech")
    if not smooth:
        return rms
    return np.convolve(np.pad(rms, 1, mode="edge"), np.ones(3) / 3, mode="valid")


def analysis_size(height: int, width: int) -> tuple[float, tuple[int, int]]:
    """(scale, (w, h)) of the grey analysis frames: at most ANALYSIS_HEIGHT tall."""
    scale = min(1.0, ANALYSIS_HEIGHT / height)
    return scale, (max(1, round(width * scale)), max(1, round(height * scale)))


def grey_frames(frames: Iterable, scale: float, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """Grey float32 analysis frames, one at a time, from RGB frames (uint8, or float in [0, 1])."""
    import cv2

    for frame in frames:
        frame = _as_numpy(frame)
        frame = frame.astype(np.float32) * (255.0 if frame.dtype != np.uint8 else 1.0)
        frame = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        yield cv2.resize(frame, size, interpolation=cv2.INTER_AREA) if scale < 1 else frame


def mouth_motion(grey: np.ndarray, mouth, face=None) -> np.ndarray:
    """Mean |frame t - frame t-1| in the mouth box (grey levels); m[0] = 0 (see `mouth_motions`)."""
    return mouth_motions(iter(grey), [(mouth, face)])[0]


def mouth_motions(grey: Iterator[np.ndarray], places, *, compensate_head_motion: bool = True) -> list[np.ndarray]:
    """For each `(mouth, face)` place: mean |frame t - frame t-1| in the mouth box; m[0] = 0.

    One pass over the frames, holding only the previous one (memory flat in the video length).
    With a face box (and `compensate_head_motion`), the head's shift between the two frames
    (phase correlation on the face box) is undone first, so a moving head is not mistaken for
    a moving mouth.
    """
    trackers = [_MotionTracker(mouth, face if compensate_head_motion else None) for mouth, face in places]
    values: list[list[float]] = [[] for _ in trackers]
    previous = None
    for current in grey:
        for tracker, out in zip(trackers, values):
            out.append(0.0 if previous is None else tracker.step(previous, current))
        previous = current
    return [np.asarray(out, np.float32) for out in values]


class _MotionTracker:
    def __init__(self, mouth, face):
        import cv2

        self.mouth, self.face = mouth, face
        if face is not None:
            fx1, fy1, fx2, fy2 = face
            self.window = cv2.createHanningWindow((fx2 - fx1, fy2 - fy1), cv2.CV_32F)

    def step(self, previous: np.ndarray, current: np.ndarray) -> float:
        import cv2

        x1, y1, x2, y2 = self.mouth
        if self.face is not None:
            fx1, fy1, fx2, fy2 = self.face
            # copies: OpenCV's phaseCorrelate writes into non-contiguous input views
            (dx, dy), _ = cv2.phaseCorrelate(previous[fy1:fy2, fx1:fx2].copy(), current[fy1:fy2, fx1:fx2].copy(),
                                             self.window)
            if abs(dx) > 0.05 or abs(dy) > 0.05:
                shift = np.float32([[1, 0, -dx], [0, 1, -dy]])
                current = cv2.warpAffine(current, shift, (current.shape[1], current.shape[0]),
                                         flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return float(np.abs(current[y1:y2, x1:x2] - previous[y1:y2, x1:x2]).mean())
