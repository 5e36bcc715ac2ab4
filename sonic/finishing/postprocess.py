"""Optional clean-up of a generated clip: lip-sync calibration, motion smoothing, colour match,
frame-rate conversion and paste-back into the original photo.

Frames are torch float32 `[T, H, W, 3]` in [0, 1] (ComfyUI IMAGE layout), audio numpy float32
`[C, S]`. Everything runs on the CPU with NumPy/OpenCV, one frame (or a short window of
frames) at a time: each step allocates its output plus O(window) working frames, never
several copies of the clip. Paste-back, whose output is the largest, can be streamed as
chunks (`iter_paste_back`, `apply_postprocess(..., stream=True)`) straight into
`sonic.media.video.write_mp4`.

`apply_postprocess` runs the enabled steps in this order: colour match -> smoothing -> sync
calibration (measured on the cleaned crop) -> frame-rate conversion -> paste-back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from ..config import DEFAULT_FEATHER_PX, MAX_SYNC_SHIFT_MS
from ..errors import ParameterError
from .arrays import as_audio, as_frames, as_image
from .audio_shift import shift_audio
from .colour import match_colour
from .frame_rate import convert_fps
from .paste_back import even_size, iter_paste_back
from .smoothing import flicker_statistic, mouth_box_from_portrait_face, smooth_motion

SYNC_MIN_CONFIDENCE = 3.0  # "auto" applies a measured offset only above this z-score


@dataclass(frozen=True)
class PostProcessOptions:
    """What `apply_postprocess` does. The defaults change nothing (official output).

    sync: "off", "auto" (measure, then shift the audio by the offset when confident) or a
        number of milliseconds to shift by (positive = the mouth moves after the sound, so the
        audio is delayed by that much).
    smoothing: 0 = off; 0..1 strength of the jitter filter (`DEFAULT_SMOOTHING_STRENGTH` = 0.5).
    colour_match: match each frame's face colour statistics to the reference crop.
    paste_back: composite the crop into the original photo (False = return the crop only).
    feather_px: width of the paste-back blend at the crop's inner edges, in original pixels.
    output_fps: None keeps the generated rate; else any rate, with the duration kept.
    fps_method: "nearest" (repeat/drop frames, never blurs the mouth) or "blend" (cross-fade).
    """

    sync: str | float = "off"
    smoothing: float = 0.0
    colour_match: bool = False
    paste_back: bool = False
    feather_px: int = DEFAULT_FEATHER_PX
    output_fps: float | None = None
    fps_method: str = "nearest"

    def __post_init__(self) -> None:
        sync = self.sync
        if isinstance(sync, str):
            if sync not in ("off", "auto"):
                raise ParameterError(f"sync must be 'off', 'auto' or a number of milliseconds, got {sync!r}")
        elif isinstance(sync, bool) or not isinstance(sync, (int, float)) or not math.isfinite(sync) \
                or abs(sync) > MAX_SYNC_SHIFT_MS:
            raise ParameterError(f"sync must be 'off', 'auto' or milliseconds within +-{MAX_SYNC_SHIFT_MS:g}, got {sync!r}")
        if not isinstance(self.smoothing, (int, float)) or not 0 <= self.smoothing <= 1:
            raise ParameterError(f"smoothing must be between 0 (off) and 1, got {self.smoothing!r}")
        if not isinstance(self.feather_px, int) or not 0 <= self.feather_px <= 1024:
            raise ParameterError(f"feather_px must be an integer number of pixels between 0 and 1024, got {self.feather_px!r}")
        if self.output_fps is not None and (not isinstance(self.output_fps, (int, float))
                                            or not math.isfinite(self.output_fps) or not 0 < self.output_fps <= 240):
            raise ParameterError(f"output_fps must be None or a frame rate in (0, 240], got {self.output_fps!r}")
        if self.fps_method not in ("nearest", "blend"):
            raise ParameterError(f"fps_method must be 'nearest' or 'blend', got {self.fps_method!r}")


@dataclass
class PostProcessResult:
    """frames: tensor `[T, H, W, 3]` (or an iterator of chunks when streamed); report: what was done."""

    frames: torch.Tensor | Iterator[torch.Tensor]
    fps: float
    audio: np.ndarray | None
    sample_rate: int | None
    report: dict = field(default_factory=dict)


def apply_postprocess(frames, fps: float, audio, sample_rate, *, options: PostProcessOptions,
                      reference_crop=None, crop_box=None, original_image=None, face_box_in_crop=None,
                      stream: bool = False) -> PostProcessResult:
    """Run the steps `options` enables; see the module docstring for the order.

    reference_crop: the model-input image `[H, W, 3]` (needed for colour_match).
    crop_box: `(x1, y1, x2, y2)` of the crop in `original_image` pixels (needed for paste_back).
    original_image: the user's full photo `[H0, W0, 3]` (needed for paste_back).
    face_box_in_crop: `(x1, y1, x2, y2)` of the face in frame pixels; it places the colour
        statistics and the mouth region (smoothing, sync). Without it the whole frame is used
        for colour and the face is looked for with OpenCV.
    stream: with paste_back, return the frames as an iterator of chunks (bounded memory).
    """
    if not isinstance(options, PostProcessOptions):
        raise ParameterError(f"options must be a PostProcessOptions, got {type(options).__name__}")
    frames = as_frames(frames, "frames")
    report: dict = {}
    # Fail on missing inputs before any work (the heavy steps come later).
    if options.colour_match and reference_crop is None:
        raise ParameterError("colour_match needs reference_crop (the model-input image)")
    if options.paste_back and (original_image is None or crop_box is None):
        raise ParameterError("paste_back needs original_image and crop_box (where the crop came from)")
    if options.sync != "off" and audio is None:
        raise ParameterError("sync calibration needs the audio")
    mouth_box = mouth_box_from_portrait_face(face_box_in_crop, frames.shape[2], frames.shape[1]) if face_box_in_crop else None

    if options.colour_match:
        frames = match_colour(frames, reference_crop, face_box=face_box_in_crop)
        report["colour_match"] = {"applied": True, "region": "face box" if face_box_in_crop else "whole frame"}
    if options.smoothing > 0:
        before = flicker_statistic(frames)
        frames = smooth_motion(frames, options.smoothing, mouth_box=mouth_box)
        report["smoothing"] = {"strength": options.smoothing, "flicker_before": round(before, 5),
                               "flicker_after": round(flicker_statistic(frames), 5)}
    if options.sync != "off":
        audio, report["sync"] = _calibrate_sync(frames, fps, audio, sample_rate, options.sync, mouth_box)
    if options.output_fps is not None and abs(options.output_fps - fps) > 1e-9:
        count = frames.shape[0]
        frames = convert_fps(frames, fps, options.output_fps, method=options.fps_method)
        report["fps"] = {"from": fps, "to": float(options.output_fps), "frames_before": count,
                         "frames_after": frames.shape[0], "method": options.fps_method}
        fps = float(options.output_fps)
    if options.paste_back:
        chunks = iter_paste_back(frames, original_image, crop_box, feather_px=options.feather_px)
        height, width = (even_size(*as_image(original_image).shape[:2]))
        report["paste_back"] = {"size": [width, height], "crop_box": [int(v) for v in crop_box],
                                "feather_px": options.feather_px}
        frames = chunks if stream else torch.cat(list(chunks))
    return PostProcessResult(frames=frames, fps=fps, audio=audio, sample_rate=sample_rate, report=report)


def _calibrate_sync(frames, fps, audio, sample_rate, sync, mouth_box) -> tuple[np.ndarray, dict]:
    from ..sync.measure import measure_sync

    audio = as_audio(audio)
    if sync == "auto":
        measured = measure_sync(frames, fps, audio, sample_rate, mouth_box=mouth_box)
        entry = {"mode": "auto", "measured_offset_ms": measured.offset_ms, "confidence": measured.confidence}
        if measured.confidence < SYNC_MIN_CONFIDENCE:
            entry.update(applied_shift_ms=0.0, note=f"not applied: confidence {measured.confidence} < "
                                                    f"{SYNC_MIN_CONFIDENCE:g} (no clear mouth/audio relation)")
            return audio, entry
        shift = measured.offset_ms
    else:
        entry = {"mode": "manual"}
        shift = float(sync)
    entry["applied_shift_ms"] = shift
    return shift_audio(audio, sample_rate, shift), entry
