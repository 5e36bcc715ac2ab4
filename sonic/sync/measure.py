"""Lip-sync measurement without learned weights (EVALUATION.md section 3.1).

Two per-frame signals are compared over lags of +-0.4 s:

* mouth motion `m[t]`: mean absolute grey-level change between frames t-1 and t inside a
  mouth box (the lower middle of the face), after cancelling the head's own shift between
  those frames (phase correlation on the face box), so head motion is not read as speech;
* audio change `a[t]`: how much the audio loudness (RMS over the frame's 1/fps seconds)
  changes between frames t-1 and t.

Both are "change" signals: a mouth moves when it opens or closes, i.e. when loudness rises
or falls, so their cross-correlation peaks at the true delay. The lag of the peak (refined
between frames by a parabola) is the offset: **positive = the mouth moves after the
sound**. Confidence is a z-score (Fisher-z units) of the peak against a null made of the same
search with the audio circularly shifted by at least 2 s and cut into shuffled 1 s blocks: 3
or more means the mouth really follows this audio; a mouth that never moves, or that follows
other speech, scores near 0 (on 5 s clips chance reaches about 3 now and then; longer clips
separate better). Offsets on shorter windows reveal drift (reported from about 16 s on).

This is a proxy for SyncNet's Sync-C (it follows opening and closing, not visemes) that
needs no downloaded weights, so it runs in CI and on any talking-head video.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import numpy as np

from ..errors import ParameterError
from .faces import (FACE_MIN_FRAME_SHARE, FACE_MIN_PIXELS, FACE_SAMPLES, _face_box_around_mouth,  # noqa: F401
                    _scaled_box, detect_face_box, detect_face_boxes, mouth_box_from_face)
from .lag import (DRIFT_MIN_SPAN_SECONDS, MIN_SECONDS, NULL_MIN_SHIFT_SECONDS, NULL_MIN_SPREAD,  # noqa: F401
                  NULL_SHIFTS, _drift, _null_z_score, _parabolic_offset, _silence_activity, _window_offsets,
                  lag_correlation)
from .plot import PLOT_COLOURS, check_plot_path, plot_lag_curves  # noqa: F401
from .signals import (ANALYSIS_HEIGHT, _analysis_frames, _as_numpy, analysis_size, audio_loudness,  # noqa: F401
                      grey_frames, mouth_motion, mouth_motions)

MAX_LAG_SECONDS = 0.4  # search range, +-; human lip-sync tolerance is well inside it
IN_SYNC_MAX_MS = 80.0  # EVALUATION.md 3.1 pass criteria: |offset| <= 2 frames at 25 fps ...
IN_SYNC_MIN_CONFIDENCE = 3.0  # ... and z >= 3
WINDOW_LAG_SECONDS = 0.16  # per-window search around the whole-clip lag (drift, not jumps)
EXIT_USER_ERROR = 2  # as in sonic.cli (and argparse)
EXIT_NOT_IN_SYNC = 3


@dataclass
class SyncReport:
    """Result of `measure_sync`. Times in milliseconds / seconds, boxes in input pixels."""

    offset_ms: float  # positive: the mouth moves after the sound
    confidence: float  # z-score of the correlation peak against the shifted-audio null
    peak_correlation: float  # Pearson r at the best lag (-1..1)
    in_sync: bool  # |offset| <= 80 ms and confidence >= 3
    drift_ms_per_min: float | None  # slope of the per-window offsets; None if fewer than 2 usable windows
    silence_mouth_activity: float | None  # mouth motion in silent frames / in speech frames; None without both
    duration_s: float
    fps: float
    mouth_box: tuple[int, int, int, int]  # x1, y1, x2, y2
    windows: list[dict] = field(default_factory=list)  # start_s, end_s, offset_ms, correlation
    lag_curve_ms: list[float] = field(default_factory=list)  # lags searched, ms
    lag_curve_r: list[float] = field(default_factory=list)  # correlation at each lag

    def to_dict(self, *, curves: bool = False) -> dict:
        data = asdict(self)
        data["mouth_box"] = list(self.mouth_box)
        if not curves:
            data.pop("lag_curve_ms")
            data.pop("lag_curve_r")
        return data


# --------------------------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------------------------

def measure_sync(frames, fps: float, audio, sample_rate: int, *, mouth_box=None,
                 compensate_head_motion: bool = True) -> SyncReport:
    """Measure the audio/mouth offset of a talking-head clip held in memory.

    frames: float `[T, H, W, 3]` in [0, 1] (torch or numpy) or uint8 `[T, H, W, 3]`.
    fps: frames per second. audio: `[C, S]` or `[S]` float waveform at `sample_rate` Hz; it
        starts at the first frame.
    mouth_box: `(x1, y1, x2, y2)` in frame pixels; by default the lower middle of a face that
        OpenCV's Haar detector finds on a few frames (FaceNotFoundError if none); of several
        faces, the one whose mouth motion follows the audio best (the speaker).
    """
    frames = _as_numpy(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ParameterError(f"frames must be [T, H, W, 3] (RGB), got shape {tuple(frames.shape)}")
    return measure_sync_stream(lambda: iter(frames), len(frames), frames.shape[1:3], fps, audio, sample_rate,
                               mouth_box=mouth_box, compensate_head_motion=compensate_head_motion)


def measure_sync_stream(open_frames: Callable[[], Iterable], count: int, size: tuple[int, int], fps: float, audio,
                        sample_rate: int, *, mouth_box=None, compensate_head_motion: bool = True) -> SyncReport:
    """`measure_sync` over frames that are streamed, never all held: `open_frames()` returns a
    fresh iterator of RGB frames `[H, W, 3]` each time it is called (twice when the face must be
    found: once for a few sampled frames, once for the motion). `count` is the expected number
    of frames (the actual number read wins), `size` their (height, width)."""
    try:
        fps = float(fps)
    except (TypeError, ValueError):
        fps = float("nan")
    if not (math.isfinite(fps) and fps > 0):
        raise ParameterError(f"fps must be a positive number of frames per second, got {fps!r}")
    if count / fps < MIN_SECONDS:
        raise ParameterError(f"the clip lasts {count / fps:.2f} s; lip-sync needs at least {MIN_SECONDS:g} s")
    # Audio first: its problems are cheap to find, before any frame is decoded.
    audio_loudness(audio, sample_rate, fps, count)
    scale, analysis = analysis_size(*size)
    width, height = analysis
    if mouth_box is None:
        # Haar may also fire steadily on something that is not the speaker's face (a badge, a
        # pattern, a second person): the face whose mouth follows the audio best is the speaker.
        sampled = _sampled_frames(grey_frames(open_frames(), scale, analysis), count)
        places = [(mouth_box_from_face(face, width, height), face)
                  for face in detect_face_boxes(sampled, samples=len(sampled))]
    else:
        mouth = _scaled_box(mouth_box, scale, width, height)
        places = [(mouth, _face_box_around_mouth(mouth, width, height))]
    motions = mouth_motions(grey_frames(open_frames(), scale, analysis), places,
                            compensate_head_motion=compensate_head_motion)
    count = len(motions[0])
    if count / fps < MIN_SECONDS:
        raise ParameterError(f"the clip holds {count} frames ({count / fps:.2f} s); lip-sync needs at least "
                             f"{MIN_SECONDS:g} s")
    loudness = audio_loudness(audio, sample_rate, fps, count)  # smoothed: for the silence test
    raw_loudness = audio_loudness(audio, sample_rate, fps, count, smooth=False)  # its change is sharper
    audio_change = np.abs(np.diff(raw_loudness, prepend=raw_loudness[0]))
    audio_change[0] = 0.0
    max_lag = max(1, int(round(MAX_LAG_SECONDS * fps)))
    candidates = []
    for (mouth, _), motion in zip(places, motions):
        lags, curve = lag_correlation(audio_change, motion, max_lag)
        candidates.append((float(curve.max()), mouth, motion, lags, curve))
    _, mouth, motion, lags, curve = max(candidates, key=lambda c: c[0])
    best = int(np.argmax(curve))
    if motion.std() < 1e-6:  # the mouth never moves: no offset to speak of
        best = int(np.flatnonzero(lags == 0)[0])
    peak = float(curve[best])
    offset_frames = lags[best] + _parabolic_offset(curve, best)
    confidence = _null_z_score(audio_change, motion, max_lag, peak, fps)
    offset_ms = float(offset_frames * 1000.0 / fps)

    windows = _window_offsets(audio_change, motion, fps, lags[best], max(1, int(round(WINDOW_LAG_SECONDS * fps))))
    full_box = tuple(int(round(v / scale)) for v in mouth)
    return SyncReport(
        offset_ms=round(offset_ms, 1) + 0.0, confidence=round(confidence, 2), peak_correlation=round(peak, 4),
        in_sync=bool(abs(offset_ms) <= IN_SYNC_MAX_MS and confidence >= IN_SYNC_MIN_CONFIDENCE),
        drift_ms_per_min=_drift(windows), silence_mouth_activity=_silence_activity(loudness, motion, lags[best]),
        duration_s=round(count / fps, 3), fps=float(fps), mouth_box=full_box, windows=windows,
        lag_curve_ms=[round(float(lag) * 1000.0 / fps, 1) for lag in lags],
        lag_curve_r=[round(float(r), 4) for r in curve])


def _sampled_frames(grey, count: int) -> np.ndarray:
    """The FACE_SAMPLES frames spread evenly over `count` (as face detection picks them), kept
    while the others stream past."""
    picks = set(np.linspace(0, count - 1, min(FACE_SAMPLES, count)).round().astype(int).tolist())
    last = max(picks)
    kept = []
    for index, frame in enumerate(grey):
        if index in picks:
            kept.append(frame)
        if index >= last:
            break
    if not kept:
        raise ParameterError("the video holds no frames")
    return np.stack(kept)
