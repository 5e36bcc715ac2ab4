"""The offset between two per-frame signals: lag correlation, its null z-score, windows, drift, silence."""

from __future__ import annotations

import math

import numpy as np

MIN_SECONDS = 2.0  # shorter clips cannot give a meaningful null
NULL_MIN_SHIFT_SECONDS = 2.0  # audio shifts used for the null are at least this long
NULL_SHIFTS = 20
NULL_MIN_SPREAD = 0.05  # floor on the null's standard deviation (Fisher-z units)
DRIFT_MIN_SPAN_SECONDS = 8.0  # drift needs windows this far apart (clips of about 16 s or more)


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
