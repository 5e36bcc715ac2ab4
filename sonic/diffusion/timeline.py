"""Length arithmetic of a Sonic run, written once (SPEC 3.4).

Every length in the pipeline follows from the number of 16 kHz samples `S`:

* audio frames (25 fps, 640 samples = 40 ms each): `S // 640`
* generated frames `N` (12.5 fps, 1280 samples = 80 ms each): `audio_frames // 2`
* Whisper steps used (50 Hz): `2 * audio_frames`
* the video covers `N * 1280` samples, i.e. `N / 12.5` seconds; up to 79 ms of audio at the
  end is not covered by any frame.

With RIFE the official code writes `2N - 1` frames at 25 fps; we hold the last frame once more
and write `2N`, so the video lasts exactly `N / 12.5` s with or without interpolation.

Unlike the official code there is no hidden 400 s cap (`frame_num = 10000`): the whole audio is
used unless the user asks for a shorter `duration`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import AUDIO_FRAMES_PER_GENERATED_FRAME, SAMPLE_RATE, SAMPLES_PER_AUDIO_FRAME
from ..errors import AudioError, ParameterError

MIN_AUDIO_SECONDS = 0.2  # s: shorter clips give at most one frame; the official code crashes below 80 ms
DURATION_TOLERANCE_SECONDS = 0.1  # s: a requested duration this close to the audio length means "all of it"

AUDIO_FPS = SAMPLE_RATE / SAMPLES_PER_AUDIO_FRAME  # 25.0 audio frames per second
GENERATED_FPS = AUDIO_FPS / AUDIO_FRAMES_PER_GENERATED_FRAME  # 12.5 generated frames per second
SAMPLES_PER_GENERATED_FRAME = SAMPLES_PER_AUDIO_FRAME * AUDIO_FRAMES_PER_GENERATED_FRAME  # 1280
INTERPOLATION_FACTOR = 2  # RIFE doubles the frame rate: 12.5 -> 25 fps


@dataclass(frozen=True)
class Timeline:
    """Frame counts and durations derived from a 16 kHz sample count."""

    num_samples: int  # samples at 16 kHz

    @classmethod
    def from_samples(cls, num_samples: int) -> "Timeline":
        """Timeline of `num_samples` 16 kHz samples; `AudioError` if that is under 0.2 s."""
        num_samples = int(num_samples)
        if num_samples < round(MIN_AUDIO_SECONDS * SAMPLE_RATE):
            raise AudioError(
                f"the audio is {num_samples / SAMPLE_RATE:.3f} s long; at least {MIN_AUDIO_SECONDS} s is needed "
                f"(one video frame per 80 ms of audio). Use a longer audio clip.")
        return cls(num_samples)

    @property
    def audio_seconds(self) -> float:
        """Length of the audio in seconds."""
        return self.num_samples / SAMPLE_RATE

    @property
    def audio_frames(self) -> int:
        """25 fps audio frames (official `audio_len`): whole 40 ms blocks of audio."""
        return self.num_samples // SAMPLES_PER_AUDIO_FRAME

    @property
    def generated_frames(self) -> int:
        """Frames the diffusion model generates (`N`), at 12.5 fps."""
        return self.audio_frames // AUDIO_FRAMES_PER_GENERATED_FRAME

    @property
    def whisper_steps(self) -> int:
        """Whisper encoder steps (50 Hz) kept for the per-frame windows: 2 per audio frame."""
        return 2 * self.audio_frames

    @property
    def covered_samples(self) -> int:
        """16 kHz samples spanned by the generated frames (`N * 1280`)."""
        return self.generated_frames * SAMPLES_PER_GENERATED_FRAME

    @property
    def video_seconds(self) -> float:
        """Duration of the output video in seconds (`N / 12.5`), with or without interpolation."""
        return self.generated_frames / GENERATED_FPS

    def output_frames(self, interpolate: bool) -> int:
        """Frames written to the video: `round(audio_seconds * fps)`, so the video ends with its audio.

        The model makes `N` frames (`2N` after RIFE, whose last frame is held once); the audio
        after the last whole 80 ms block (at most 2 frames at 25 fps) is covered by holding the
        last frame, instead of cutting the end of the speech off as the reference does.
        """
        made = self.generated_frames * (INTERPOLATION_FACTOR if interpolate else 1)
        return max(made, round(self.audio_seconds * self.output_fps(interpolate)))

    def held_frames(self, interpolate: bool) -> int:
        """Copies of the last frame appended after the generated (and interpolated) frames."""
        return self.output_frames(interpolate) - self.generated_frames * (INTERPOLATION_FACTOR if interpolate else 1)

    def output_fps(self, interpolate: bool) -> float:
        """Frame rate of the written video in frames per second."""
        return GENERATED_FPS * (INTERPOLATION_FACTOR if interpolate else 1)


def resolve_duration(audio_seconds: float, duration: float | None) -> float:
    """Seconds of audio to use, given the audio length and the user's `duration` (seconds).

    `None` or 0 -> the whole audio. A duration within 0.1 s of the audio length also means the
    whole audio (a UI rounds lengths). A shorter duration trims the audio to that many seconds.
    A longer one, or a negative / non-finite one, is a `ParameterError`; a result under 0.2 s
    is an `AudioError` (audio) or a `ParameterError` (duration).
    """
    if audio_seconds < MIN_AUDIO_SECONDS:
        raise AudioError(
            f"the audio is {audio_seconds:.3f} s long; at least {MIN_AUDIO_SECONDS} s is needed "
            f"(one video frame per 80 ms of audio). Use a longer audio clip.")
    if duration is None:
        return float(audio_seconds)
    if isinstance(duration, bool) or not isinstance(duration, (int, float)):
        raise ParameterError(f"duration must be a number of seconds (0 = whole audio), got {duration!r}")
    duration = float(duration)
    if not math.isfinite(duration) or duration < 0:
        raise ParameterError(f"duration must be a finite number of seconds >= 0 (0 = whole audio), got {duration}")
    if duration == 0 or abs(duration - audio_seconds) <= DURATION_TOLERANCE_SECONDS:
        return float(audio_seconds)
    if duration > audio_seconds:
        raise ParameterError(
            f"duration {duration:.2f} s is longer than the audio ({audio_seconds:.2f} s); "
            f"set duration to 0 to use the whole audio, or to at most {audio_seconds:.2f} s")
    if duration < MIN_AUDIO_SECONDS:
        raise ParameterError(
            f"duration {duration:.3f} s is too short; use at least {MIN_AUDIO_SECONDS} s (or 0 for the whole audio)")
    return duration
