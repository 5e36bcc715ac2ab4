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
from pathlib import Path

import numpy as np

from ..errors import AudioError, FaceNotFoundError, OutputError, ParameterError, SonicError

MAX_LAG_SECONDS = 0.4  # search range, +-; human lip-sync tolerance is well inside it
NULL_MIN_SHIFT_SECONDS = 2.0  # audio shifts used for the null are at least this long
NULL_SHIFTS = 20
NULL_MIN_SPREAD = 0.05  # floor on the null's standard deviation (Fisher-z units)
MIN_SECONDS = 2.0  # shorter clips cannot give a meaningful null
IN_SYNC_MAX_MS = 80.0  # EVALUATION.md 3.1 pass criteria: |offset| <= 2 frames at 25 fps ...
IN_SYNC_MIN_CONFIDENCE = 3.0  # ... and z >= 3
WINDOW_LAG_SECONDS = 0.16  # per-window search around the whole-clip lag (drift, not jumps)
DRIFT_MIN_SPAN_SECONDS = 8.0  # drift needs windows this far apart (clips of about 16 s or more)
ANALYSIS_HEIGHT = 360  # px: frames are analysed at most this tall (speed; a mouth stays > 20 px)
FACE_MIN_PIXELS = 24  # px (analysed frame, before upscaling): a smaller face has no measurable mouth
FACE_SAMPLES = 12  # frames sampled evenly for face detection
FACE_MIN_FRAME_SHARE = 0.4  # a face must be found in this share of them: a stray box is not; a face that
#                             Haar misses while the mouth is wide open still is
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
    """Measure the audio/mouth offset of a talking-head clip.

    frames: float `[T, H, W, 3]` in [0, 1] (torch or numpy) or uint8 `[T, H, W, 3]`.
    fps: frames per second. audio: `[C, S]` or `[S]` float waveform at `sample_rate` Hz; it
        starts at the first frame.
    mouth_box: `(x1, y1, x2, y2)` in frame pixels; by default the lower middle of a face that
        OpenCV's Haar detector finds on a few frames (FaceNotFoundError if none); of several
        faces, the one whose mouth motion follows the audio best (the speaker).
    """
    try:
        fps = float(fps)
    except (TypeError, ValueError):
        fps = float("nan")
    if not (math.isfinite(fps) and fps > 0):
        raise ParameterError(f"fps must be a positive number of frames per second, got {fps!r}")
    count = len(frames)
    if count / fps < MIN_SECONDS:
        raise ParameterError(f"the clip lasts {count / fps:.2f} s; lip-sync needs at least {MIN_SECONDS:g} s")
    # Audio first: its problems are cheap to find, before the frames are converted.
    loudness = audio_loudness(audio, sample_rate, fps, count)  # smoothed: for the silence test
    raw_loudness = audio_loudness(audio, sample_rate, fps, count, smooth=False)  # its change is sharper
    grey, scale = _analysis_frames(frames)

    audio_change = np.abs(np.diff(raw_loudness, prepend=raw_loudness[0]))
    audio_change[0] = 0.0
    max_lag = max(1, int(round(MAX_LAG_SECONDS * fps)))
    height, width = grey.shape[1:3]
    if mouth_box is None:
        # Haar may also fire steadily on something that is not the speaker's face (a badge, a
        # pattern, a second person): the face whose mouth follows the audio best is the speaker.
        places = [(mouth_box_from_face(face, width, height), face) for face in detect_face_boxes(grey)]
    else:
        mouth = _scaled_box(mouth_box, scale, width, height)
        places = [(mouth, _face_box_around_mouth(mouth, width, height))]
    candidates = []
    for mouth, face in places:
        motion = mouth_motion(grey, mouth, face if compensate_head_motion else None)
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


def _analysis_frames(frames) -> tuple[np.ndarray, float]:
    """Grey float32 `[T, h, w]` at most ANALYSIS_HEIGHT tall, and the scale applied."""
    import cv2

    frames = _as_numpy(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ParameterError(f"frames must be [T, H, W, 3] (RGB), got shape {tuple(frames.shape)}")
    height, width = frames.shape[1:3]
    scale = min(1.0, ANALYSIS_HEIGHT / height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    grey = np.empty((frames.shape[0], size[1], size[0]), np.float32)
    for index, frame in enumerate(frames):
        frame = frame.astype(np.float32) * (255.0 if frames.dtype != np.uint8 else 1.0)
        frame = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        grey[index] = cv2.resize(frame, size, interpolation=cv2.INTER_AREA) if scale < 1 else frame
    return grey, scale


def _as_numpy(values) -> np.ndarray:
    """numpy view of a numpy array or torch tensor, without importing torch (slow to import)."""
    if type(values).__module__.startswith("torch"):
        values = values.detach().cpu()
        values = (values.float() if values.dtype.is_floating_point else values).numpy()  # bf16 has no numpy
    return np.asarray(values)


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


def detect_face_box(grey: np.ndarray, *, samples: int = FACE_SAMPLES) -> tuple[int, int, int, int]:
    """The face box `(x1, y1, x2, y2)` Haar finds most consistently (see `detect_face_boxes`)."""
    return detect_face_boxes(grey, samples=samples)[0]


def detect_face_boxes(grey: np.ndarray, *, samples: int = FACE_SAMPLES,
                      limit: int = 3) -> list[tuple[int, int, int, int]]:
    """Median boxes `(x1, y1, x2, y2)` of the faces Haar finds consistently on a few frames,
    best first (at most `limit`; FaceNotFoundError when there is none).

    Haar misses faces on some frames and fires on stray patterns on others (noise, textures),
    so boxes from evenly spaced frames are grouped by overlap, and a group counts as the face
    only when it is found in enough of the sampled frames (FACE_MIN_FRAME_SHARE) and is at least
    FACE_MIN_PIXELS tall in real pixels (a smaller "face" has no measurable mouth). Small
    frames are upscaled to 360 px and contrast-equalised first (both help Haar a lot). Haar runs
    strict and loose; the consistent places are ranked by how often strict boxes confirm them.
    """
    import cv2

    from ..errors import WeightsError
    from ..inputs.face_detectors import haar_cascade

    try:
        detector = haar_cascade()
    except WeightsError:
        raise SonicError("OpenCV's Haar face cascade is missing (opencv 5 wheels ship none); "
                         "install opencv-python<5 or pass a mouth box") from None
    height, width = grey.shape[1:3]
    upscale = max(1.0, 360 / height)
    size = (round(width * upscale), round(height * upscale))
    picks = np.linspace(0, grey.shape[0] - 1, min(samples, grey.shape[0])).round().astype(int)
    images = []
    for index in picks:
        frame = np.clip(grey[index], 0, 255).astype(np.uint8)
        if upscale > 1:
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)
        images.append(cv2.equalizeHist(frame))
    min_side = int(math.ceil(max(FACE_MIN_PIXELS * upscale, size[1] / 12)))
    needed = max(1, math.ceil(FACE_MIN_FRAME_SHARE * len(images)))

    def detect(neighbours: int) -> list[list[tuple]]:
        return [[(x, y, x + w, y + h, neighbours) for x, y, w, h in
                 detector.detectMultiScale(image, scaleFactor=1.1, minNeighbors=neighbours,
                                           minSize=(min_side, min_side))] for image in images]

    # Strict (5 neighbours) boxes are rarely false but miss the face on some frames; loose (3)
    # ones find it more often but also fire on textures. A place counts when it is seen (either
    # way) in enough frames; they are ranked by how often the strict pass confirms them.
    per_frame = [strict + loose for strict, loose in zip(detect(5), detect(3))]
    groups = _groups_across_frames(per_frame)
    consistent = [g for g in groups if len(g) >= needed]
    if consistent:
        consistent.sort(key=lambda g: (sum(box[4] == 5 for box in g), len(g), _area(g[0])), reverse=True)
        return [tuple(int(round(v / upscale)) for v in np.median(np.array(g)[:, :4], axis=0))
                for g in consistent[:limit]]
    best_count = max((len(g) for g in groups), default=0)
    found = f"a face-like pattern in only {best_count} of {len(images)} sampled frames" if best_count \
        else f"nothing in {len(images)} sampled frames"
    raise FaceNotFoundError(f"no face found in the video (OpenCV Haar detector, frontal faces at least "
                            f"{FACE_MIN_PIXELS} px tall in {needed} or more of {len(images)} sampled frames; "
                            f"{found}); pass the mouth region with --mouth-box x1,y1,x2,y2")


def _groups_across_frames(per_frame: list[list[tuple]]) -> list[list[tuple]]:
    """Boxes `(x1, y1, x2, y2, ...)` grouped by place and size across frames, at most one box per
    frame in a group (a frame's strict box preferred, then its larger ones)."""
    groups: list[list] = []
    for boxes in per_frame:
        claimed: set[int] = set()
        for box in sorted(boxes, key=lambda b: (-b[4], -_area(b))):
            index = next((i for i, g in enumerate(groups) if _iou(g[0], box) > 0.4), None)
            if index is None:
                groups.append([box])
                claimed.add(len(groups) - 1)
            elif index not in claimed:  # else: this frame's second box of the same place (strict + loose)
                groups[index].append(box)
                claimed.add(index)
    return groups


def _area(box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def _iou(a, b) -> float:
    inter_w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def mouth_box_from_face(face, width: int, height: int) -> tuple[int, int, int, int]:
    """Lower middle of a face box: the mouth sits at 60-110 % of a Haar box's height."""
    x1, y1, x2, y2 = face
    w, h = x2 - x1, y2 - y1
    box = (x1 + 0.2 * w, y1 + 0.6 * h, x2 - 0.2 * w, y1 + 1.1 * h)
    return _clip_box(box, width, height)


def _face_box_around_mouth(mouth, width: int, height: int) -> tuple[int, int, int, int]:
    """A face-sized box around a given mouth box (inverse of `mouth_box_from_face`)."""
    x1, y1, x2, y2 = mouth
    w = (x2 - x1) / 0.6
    h = (y2 - y1) / 0.5
    top = y1 - 0.6 * h
    return _clip_box((x1 - 0.2 * w, top, x2 + 0.2 * w, top + h), width, height)


def _clip_box(box, width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, y1 = max(0, x1), max(0, y1)
    x2, y2 = min(width, x2), min(height, y2)
    if x2 - x1 < 2 or y2 - y1 < 2:
        raise ParameterError(f"the mouth box {box} is empty inside a {width}x{height} frame")
    return x1, y1, x2, y2


def _scaled_box(box, scale: float, width: int, height: int) -> tuple[int, int, int, int]:
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        raise ParameterError(f"mouth_box must be four numbers x1, y1, x2, y2 in pixels, got {box!r}") from None
    if len(values) != 4 or values[2] <= values[0] or values[3] <= values[1]:
        raise ParameterError(f"mouth_box must be x1, y1, x2, y2 with x2 > x1 and y2 > y1, got {box!r}")
    return _clip_box([v * scale for v in values], width, height)


def mouth_motion(grey: np.ndarray, mouth, face=None) -> np.ndarray:
    """Mean |frame t - frame t-1| in the mouth box (grey levels); m[0] = 0.

    With `face`, the head's shift between the two frames (phase correlation on the face box)
    is undone first, so a moving head is not mistaken for a moving mouth.
    """
    import cv2

    x1, y1, x2, y2 = mouth
    motion = np.zeros(grey.shape[0], np.float32)
    if face is not None:
        fx1, fy1, fx2, fy2 = face
        window = cv2.createHanningWindow((fx2 - fx1, fy2 - fy1), cv2.CV_32F)
    for t in range(1, grey.shape[0]):
        previous, current = grey[t - 1], grey[t]
        if face is not None:
            # copies: OpenCV's phaseCorrelate writes into non-contiguous input views
            (dx, dy), _ = cv2.phaseCorrelate(previous[fy1:fy2, fx1:fx2].copy(), current[fy1:fy2, fx1:fx2].copy(),
                                             window)
            if abs(dx) > 0.05 or abs(dy) > 0.05:
                shift = np.float32([[1, 0, -dx], [0, 1, -dy]])
                current = cv2.warpAffine(current, shift, (current.shape[1], current.shape[0]),
                                         flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        motion[t] = np.abs(current[y1:y2, x1:x2] - previous[y1:y2, x1:x2]).mean()
    return motion


def lag_correlation(audio_signal: np.ndarray, mouth_signal: np.ndarray, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Pearson r between `audio[t]` and `mouth[t + lag]` over the overlap, for lag in [-max_lag, max_lag]."""
    lags = np.arange(-max_lag, max_lag + 1)
    values = np.zeros(lags.size)
    n = audio_signal.size
    for index, lag in enumerate(lags):
        a = audio_signal[max(0, -lag): n - max(0, lag)]
        m = mouth_signal[max(0, lag): n - max(0, -lag)]
        values[index] = _pearson(a, m)
    return lags, values


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 3:
        return 0.0
    a = a - a.mean()
    b = b - b.mean()
    norm = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / norm) if norm > 1e-12 else 0.0


def _parabolic_offset(curve: np.ndarray, best: int) -> float:
    """Sub-frame position of a peak from its two neighbours (0 at the ends)."""
    if best == 0 or best == curve.size - 1:
        return 0.0
    left, centre, right = curve[best - 1], curve[best], curve[best + 1]
    denominator = left - 2 * centre + right
    return float(0.5 * (left - right) / denominator) if denominator < 0 else 0.0


def _null_z_score(audio_signal, mouth_signal, max_lag: int, peak: float, fps: float) -> float:
    """(peak - mean) / std, in Fisher-z units, of the peaks found against scrambled copies of the audio.

    Each copy is circularly shifted by at least 2 s (or a third of the clip) and cut into
    1 s blocks put in a random order (fixed seed): it keeps the audio's rhythm but not its
    timing. Shifts alone give near-identical copies on a short clip and so a spread that is
    far too small.
    """
    n = audio_signal.size
    rng = np.random.default_rng(0)
    min_shift = max(min(int(round(NULL_MIN_SHIFT_SECONDS * fps)), n // 3), 2 * max_lag + 1)
    block = max(2 * max_lag + 1, int(round(fps)))
    starts = np.arange(0, n, block)
    peaks = []
    for _ in range(NULL_SHIFTS):
        shifted = np.roll(audio_signal, int(rng.integers(min_shift, max(min_shift + 1, n - min_shift + 1))))
        scrambled = np.concatenate([shifted[s:s + block] for s in rng.permutation(starts)])
        peaks.append(lag_correlation(scrambled, mouth_signal, max_lag)[1].max())
    # Fisher's z = atanh(r) has the same spread at every r, so a near-perfect peak (r ~ 0.97)
    # stands out from chance (r ~ 0.2 +- 0.15 on a 5 s clip) as much as it should.
    null = np.arctanh(np.clip(np.array(peaks), -0.999, 0.999))
    spread = max(float(null.std()), NULL_MIN_SPREAD)
    return float((np.arctanh(np.clip(peak, -0.999, 0.999)) - null.mean()) / spread)


def _window_offsets(audio_signal, mouth_signal, fps: float, centre_lag: int, reach: int) -> list[dict]:
    """Offsets on 10 s windows (hop 5 s; clips under 30 s: thirds, hop half a window).

    Drift is a slow departure from the whole-clip offset, so each window searches only
    `centre_lag +- reach` frames: a short window's chance peak far away cannot pose as drift.
    """
    n = audio_signal.size
    duration = n / fps
    length = 10.0 if duration >= 30.0 else max(MIN_SECONDS, duration / 3)
    size = int(round(length * fps))
    hop = max(1, size // 2)
    windows = []
    for start in range(0, max(1, n - size + 1), hop):
        part = slice(start, min(n, start + size))
        lags, curve = lag_correlation(audio_signal[part], mouth_signal[part], abs(centre_lag) + reach)
        keep = np.abs(lags - centre_lag) <= reach
        lags, curve = lags[keep], curve[keep]
        best = int(np.argmax(curve))
        offset = (lags[best] + _parabolic_offset(curve, best)) * 1000.0 / fps
        windows.append({"start_s": round(start / fps, 3), "end_s": round(part.stop / fps, 3),
                        "offset_ms": round(float(offset), 1), "correlation": round(float(curve[best]), 4)})
    return windows


def _drift(windows: list[dict], min_correlation: float = 0.2) -> float | None:
    """Weighted least-squares slope of window offsets over window centres, in ms per minute.

    None when the usable windows' centres span less than DRIFT_MIN_SPAN_SECONDS: over a few
    seconds, offset noise of a few ms would extrapolate to hundreds of ms per minute.
    """
    usable = [w for w in windows if w["correlation"] >= min_correlation]
    centres = np.array([(w["start_s"] + w["end_s"]) / 2 for w in usable])
    if len(usable) < 2 or centres.max() - centres.min() < DRIFT_MIN_SPAN_SECONDS:
        return None
    offsets = np.array([w["offset_ms"] for w in usable])
    weights = np.array([w["correlation"] for w in usable]) ** 2
    slope = np.polyfit(centres, offsets, 1, w=np.sqrt(weights))[0]
    return round(float(slope * 60.0), 1)


def _silence_activity(loudness: np.ndarray, motion: np.ndarray, lag: int) -> float | None:
    """Mouth motion in silent frames / in speech frames, with the mouth aligned to the sound.

    Silence: 30 dB or more below the loud (95th percentile) level, at least 2 frames away
    from speech (a mouth may still close just after a word). Speech: within 15 dB of it.
    """
    level = 20 * np.log10(loudness + 1e-9)
    loud = np.percentile(level, 95)
    speech = level > loud - 15
    silent = level < loud - 30
    near_speech = np.convolve(speech.astype(float), np.ones(5), mode="same") > 0
    silent &= ~near_speech
    aligned = np.roll(motion, -lag)
    valid = np.ones_like(speech)
    if lag > 0:
        valid[-lag:] = False
    elif lag < 0:
        valid[:-lag] = False
    valid[0] = False
    speech_frames, silent_frames = aligned[speech & valid], aligned[silent & valid]
    if speech_frames.size < 5 or silent_frames.size < 5 or speech_frames.mean() <= 1e-9:
        return None
    return round(float(silent_frames.mean() / speech_frames.mean()), 3)


# --------------------------------------------------------------------------------------------
# plot
# --------------------------------------------------------------------------------------------

PLOT_COLOURS = ((200, 60, 40), (40, 120, 200), (60, 160, 60), (150, 80, 170))  # RGB


def check_plot_path(path) -> Path:
    """The plot's path, if a PNG can be written there (OutputError otherwise): cheap, so checked first."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"the plot path {str(path)!r} is a folder; give a file name ending in .png, "
                          f"e.g. {str(path / 'sync.png')!r}")
    if path.suffix.lower() != ".png":
        raise OutputError(f"the plot path {str(path)!r} does not end in .png; the plot is a PNG image, "
                          f"e.g. {str(path.with_suffix('.png'))!r}")
    parent = path.parent
    if not parent.is_dir():
        what = "is a file, not a folder" if parent.exists() else "does not exist"
        raise OutputError(f"the plot's folder {str(parent)!r} {what}; create the folder or choose another path")
    return path


def plot_lag_curves(reports: dict[str, SyncReport], path, *, title: str = "audio/mouth correlation vs lag") -> None:
    """Draw correlation-vs-lag curves (one per labelled report) into a PNG, with OpenCV only.

    A clip in sync peaks at 0 ms; the peak's lag is the offset (positive: mouth after sound).
    """
    import cv2

    check_plot_path(path)
    width, height, left, right, top, bottom = 880, 420, 70, 20, 50, 60
    canvas = np.full((height, width, 3), 255, np.uint8)
    plot_w, plot_h = width - left - right, height - top - bottom
    lag_max = max(max(abs(v) for v in r.lag_curve_ms) for r in reports.values())

    def to_px(lag_ms: float, r: float) -> tuple[int, int]:
        return (int(left + (lag_ms + lag_max) / (2 * lag_max) * plot_w), int(top + (1 - (r + 1) / 2) * plot_h))

    font = cv2.FONT_HERSHEY_SIMPLEX
    for r in (-1.0, -0.5, 0.0, 0.5, 1.0):
        y = to_px(0, r)[1]
        cv2.line(canvas, (left, y), (left + plot_w, y), (225, 225, 225), 1)
        cv2.putText(canvas, f"{r:+.1f}", (8, y + 5), font, 0.45, (90, 90, 90), 1, cv2.LINE_AA)
    for lag in np.arange(-lag_max, lag_max + 1, 100):
        x = to_px(lag, 0)[0]
        cv2.line(canvas, (x, top), (x, top + plot_h), (235, 235, 235) if lag else (160, 160, 160), 1)
        cv2.putText(canvas, f"{lag:+.0f}", (x - 18, top + plot_h + 20), font, 0.45, (90, 90, 90), 1, cv2.LINE_AA)
    cv2.putText(canvas, "lag (ms): positive = mouth moves after the sound", (left + 150, height - 12), font, 0.5,
                (60, 60, 60), 1, cv2.LINE_AA)
    cv2.putText(canvas, title, (left, 30), font, 0.65, (20, 20, 20), 1, cv2.LINE_AA)
    for index, (label, report) in enumerate(reports.items()):
        colour = PLOT_COLOURS[index % len(PLOT_COLOURS)]
        points = np.array([to_px(lag, r) for lag, r in zip(report.lag_curve_ms, report.lag_curve_r)], np.int32)
        cv2.polylines(canvas, [points], False, colour, 2, cv2.LINE_AA)
        peak = to_px(report.offset_ms, report.peak_correlation)
        cv2.circle(canvas, peak, 5, colour, -1, cv2.LINE_AA)
        text = f"{label}: offset {int(round(report.offset_ms)):+d} ms, confidence {report.confidence:.1f}"
        cv2.putText(canvas, text, (left + 10, top + plot_h - 40 + 22 * index - 22 * (len(reports) - 2)), font, 0.5,
                    colour, 1, cv2.LINE_AA)
    try:
        written = cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    except cv2.error:
        written = False
    if not written:
        raise OutputError(f"could not write the plot to {str(path)!r}; check that its folder exists and is writable")
