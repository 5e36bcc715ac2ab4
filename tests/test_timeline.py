"""Length arithmetic (SPEC 3.4): frame counts and durations from 0.1 s to 600 s of audio."""

from __future__ import annotations

import math

import pytest

from sonic.errors import AudioError, ParameterError
from sonic.diffusion.timeline import GENERATED_FPS, Timeline, resolve_duration

RATE = 16_000


@pytest.mark.parametrize("seconds, audio_frames, generated", [
    (0.2, 5, 2),
    (0.25, 6, 3),
    (1.0, 25, 12),
    (3.3, 82, 41),  # golden/audio_features
    (10.0, 250, 125),  # the SPEC's worked example
    (30.6, 765, 382),  # golden/audio_chunking
    (60.0, 1500, 750),
    (600.0, 15000, 7500),  # 10 minutes: no hidden 400 s cap
])
def test_frame_counts(seconds, audio_frames, generated):
    timeline = Timeline.from_samples(round(seconds * RATE))
    assert timeline.audio_frames == audio_frames
    assert timeline.generated_frames == generated
    assert timeline.whisper_steps == 2 * audio_frames
    assert timeline.covered_samples == generated * 1280
    assert timeline.video_seconds == pytest.approx(generated / 12.5)
    assert timeline.output_frames(True) == max(2 * generated, round(seconds * 25))
    assert timeline.output_frames(False) == max(generated, round(seconds * 12.5))
    assert 0 <= timeline.held_frames(True) <= 2 and 0 <= timeline.held_frames(False) <= 1
    assert timeline.output_fps(True) == 25.0
    assert timeline.output_fps(False) == 12.5


@pytest.mark.parametrize("num_samples", [3200, 3201, 4479, 4480, 52800, 159_999, 160_000, 489_600, 9_600_000, 9_601_279])
def test_video_spans_the_audio_within_one_generated_frame(num_samples):
    timeline = Timeline.from_samples(num_samples)
    audio_seconds = num_samples / RATE
    # The video never outlasts the audio and misses less than 80 ms of it.
    assert 0 <= audio_seconds - timeline.video_seconds < 1 / GENERATED_FPS
    assert timeline.covered_samples <= num_samples < timeline.covered_samples + 1280
    for interpolate in (True, False):
        frames, fps = timeline.output_frames(interpolate), timeline.output_fps(interpolate)
        # The written video (generated frames + the last one held) ends with the audio.
        assert abs(frames / fps - audio_seconds) <= 0.5 / fps + 1e-12
        assert frames == timeline.held_frames(interpolate) + timeline.generated_frames * (2 if interpolate else 1)


@pytest.mark.parametrize("num_samples", [0, 1, 1600, 3199])
def test_audio_shorter_than_0_2_s_is_an_audio_error(num_samples):
    with pytest.raises(AudioError, match="at least 0.2 s"):
        Timeline.from_samples(num_samples)


@pytest.mark.parametrize("audio, duration, expected", [
    (12.0, None, 12.0),
    (12.0, 0, 12.0),
    (12.0, 0.0, 12.0),
    (12.0, 12.0, 12.0),
    (12.0, 12.08, 12.0),  # within 0.1 s: the whole audio (UIs round lengths)
    (12.0, 11.95, 12.0),
    (12.0, 5.5, 5.5),  # trim
    (12.0, 1, 1.0),
    (600.0, 599.5, 599.5),
    (0.2, None, 0.2),
])
def test_resolve_duration(audio, duration, expected):
    assert resolve_duration(audio, duration) == pytest.approx(expected)


def test_duration_longer_than_the_audio_names_both_lengths():
    with pytest.raises(ParameterError) as error:
        resolve_duration(12.0, 20.0)
    assert "20.00 s" in str(error.value) and "12.00 s" in str(error.value)


@pytest.mark.parametrize("duration", [-1.0, -0.05, math.nan, math.inf, "5", True])
def test_bad_duration_is_a_parameter_error(duration):
    with pytest.raises(ParameterError, match="duration"):
        resolve_duration(12.0, duration)


def test_duration_under_0_2_s_is_a_parameter_error():
    with pytest.raises(ParameterError, match="too short"):
        resolve_duration(12.0, 0.1)


def test_audio_under_0_2_s_is_an_audio_error_whatever_the_duration():
    with pytest.raises(AudioError):
        resolve_duration(0.1, None)
    with pytest.raises(AudioError):
        resolve_duration(0.1, 0.1)
