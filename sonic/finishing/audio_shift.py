"""Shift a soundtrack by milliseconds, keeping its length (lip-sync calibration)."""

from __future__ import annotations

import numpy as np

from ..errors import ParameterError
from .arrays import as_audio


def shift_audio(audio, sample_rate: int, shift_ms: float) -> np.ndarray:
    """Delay (positive ms) or advance (negative) the soundtrack, keeping its length exactly.

    A delay inserts silence at the start and drops the same amount at the end; an advance
    drops the start and pads silence at the end. Use the measured `offset_ms` as `shift_ms`:
    if the mouth moves 120 ms after the sound, delaying the sound by 120 ms fixes it.
    """
    audio = as_audio(audio)
    if not sample_rate or sample_rate <= 0:
        raise ParameterError(f"sample_rate must be a positive number of Hz, got {sample_rate!r}")
    samples = int(round(shift_ms * sample_rate / 1000.0))
    length = audio.shape[1]
    shifted = np.zeros_like(audio)
    if samples >= 0:
        shifted[:, samples:] = audio[:, :max(0, length - samples)]
    else:
        shifted[:, :max(0, length + samples)] = audio[:, -samples:]
    return shifted
