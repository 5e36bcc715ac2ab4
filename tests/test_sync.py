"""Lip-sync measurement (EVALUATION.md 3.1) on synthetic talking clips with known offsets.

The clip is a real portrait (scikit-image's astronaut) whose mouth is redrawn every frame
with a height that follows a speech-like loudness envelope; the soundtrack is muxed with a
known offset through the real MP4 writer and read back with ffmpeg by the real CLI.
The helpers here are reused by test_postprocess.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SAMPLE_RATE = 16_000
FPS = 25.0
SIZE = 256  # px; Haar finds the astronaut's face reliably from about this size up
MOUTH_CENTRE = (112, 63)  # px in the SIZE x SIZE portrait
MOUTH_BOX = (92, 50, 132, 82)  # px, around the drawn mouth
REPO = Path(__file__).resolve().parents[1]


def speech_like_audio(seconds: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Syllable-like tone bursts (80-250 ms, harmonic voice, short gaps, some pauses) and their envelope."""
    rng = np.random.default_rng(seed)
    count = int(round(seconds * SAMPLE_RATE))
    envelope = np.zeros(count, np.float32)
    t = 0.3
    while t < seconds - 0.4:
        length = rng.uniform(0.08, 0.25)
        start, stop = int(t * SAMPLE_RATE), int(min(t + length, seconds) * SAMPLE_RATE)
        envelope[start:stop] = np.maximum(envelope[start:stop], rng.uniform(0.4, 1.0) * np.hanning(stop - start))
        t += length + (rng.uniform(0.4, 0.8) if rng.random() < 0.15 else rng.uniform(0.03, 0.15))
    time = np.arange(count) / SAMPLE_RATE
    phase = 2 * np.pi * np.cumsum(140 + 20 * np.sin(2 * np.pi * 0.7 * time)) / SAMPLE_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 7)) + 0.1 * rng.standard_normal(count)
    return (0.4 * envelope * voice).astype(np.float32), envelope


def portrait() -> np.ndarray:
    import cv2
    import skimage.data

    return cv2.resize(skimage.data.astronaut(), (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def talking_frames(envelope: np.ndarray, *, static: bool = False) -> np.ndarray:
    """uint8 [T, SIZE, SIZE, 3]: the mouth opening in frame t = mean envelope over [t, t+1)/FPS."""
    import cv2

    base = portrait()
    count = int(len(envelope) / SAMPLE_RATE * FPS)
    frames = np.empty((count,) + base.shape, np.uint8)
    for t in range(count):
        start, stop = int(t * SAMPLE_RATE / FPS), int((t + 1) * SAMPLE_RATE / FPS)
        opening = 0.0 if static else float(envelope[start:stop].mean())
        frame = base.copy()
        cv2.ellipse(frame, MOUTH_CENTRE, (14, int(round(1 + 10 * opening))), 0, 0, 360, (60, 20, 30), -1, cv2.LINE_AA)
        frames[t] = frame
    return frames


def offset_audio(audio: np.ndarray, offset_ms: float) -> np.ndarray:
    """The soundtrack as heard when the mouth moves `offset_ms` after the sound (same length)."""
    shift = int(round(offset_ms * SAMPLE_RATE / 1000))
    if shift >= 0:
        return np.concatenate([audio[shift:], np.zeros(shift, audio.dtype)])
    return np.concatenate([np.zeros(-shift, audio.dtype), audio[:shift]])


@pytest.fixture(scope="module")
def clip():
    audio, envelope = speech_like_audio(5.0, seed=1)
    return talking_frames(envelope), audio


def write_clip(path, frames, audio):
    import torch

    from sonic.media.video import write_mp4

    return write_mp4(path, torch.from_numpy(frames), fps=FPS, audio=audio[None], sample_rate=SAMPLE_RATE,
                     preset="ultrafast")


def run_check_sync(*args) -> tuple[int, dict | None, str]:
    from sonic.cli import main

    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["check-sync", *[str(a) for a in args]])
    text = out.getvalue().strip()
    return code, (json.loads(text) if text else None), err.getvalue()


@pytest.mark.parametrize("offset_ms", [-200, -80, 0, 120, 240])
def test_check_sync_recovers_muxed_offset(tmp_path, clip, offset_ms):
    frames, audio = clip
    path = write_clip(tmp_path / f"offset{offset_ms}.mp4", frames, offset_audio(audio, offset_ms))
    code, report, err = run_check_sync(path)
    assert code == 0, err
    assert abs(report["offset_ms"] - offset_ms) <= 40, report
    assert report["confidence"] >= 5, report
    assert report["silence_mouth_activity"] is not None and report["silence_mouth_activity"] < 0.2, report
    assert report["in_sync"] == (abs(offset_ms) <= 80)
    assert {"drift_ms_per_min", "windows", "mouth_box", "peak_correlation"} <= set(report)


def test_static_mouth_gets_low_confidence(tmp_path):
    audio, envelope = speech_like_audio(5.0, seed=1)
    path = write_clip(tmp_path / "static.mp4", talking_frames(envelope, static=True), audio)
    code, report, err = run_check_sync(path)
    assert code == 0, err
    assert report["confidence"] < 3 and not report["in_sync"], report


def test_mouth_that_follows_other_audio_gets_low_confidence(clip):
    """Unrelated speech with the same rhythm statistics: chance-level confidence, far below the real match."""
    from sonic.sync.measure import measure_sync

    frames, audio = clip
    matched = measure_sync(frames, FPS, audio, SAMPLE_RATE, mouth_box=MOUTH_BOX).confidence
    chance = [measure_sync(frames, FPS, speech_like_audio(5.0, seed=seed)[0], SAMPLE_RATE, mouth_box=MOUTH_BOX).confidence
              for seed in (3, 5, 7, 9)]
    assert np.median(chance) < 2 and max(chance) < 3, chance
    assert matched > 2 * max(chance) and matched >= 5, (matched, chance)


def test_head_motion_is_not_read_as_speech(clip):
    """A head swaying by a few pixels must not hide the offset (motion is compensated)."""
    import cv2

    from sonic.sync.measure import measure_sync

    frames, audio = clip
    moved = np.stack([cv2.warpAffine(frame, np.float32([[1, 0, 4 * np.sin(0.15 * t)], [0, 1, 3 * np.sin(0.11 * t + 1)]]),
                                     (SIZE, SIZE), borderMode=cv2.BORDER_REFLECT) for t, frame in enumerate(frames)])
    report = measure_sync(moved, FPS, offset_audio(audio, 120)[None], SAMPLE_RATE)
    assert abs(report.offset_ms - 120) <= 40 and report.confidence >= 5, report


def test_drift_is_measured_on_a_long_clip():
    """Audio played 0.5 % slow drifts by -300 ms per minute (the sound falls behind the mouth)."""
    from sonic.sync.measure import measure_sync

    audio, envelope = speech_like_audio(24.0, seed=2)
    frames = talking_frames(envelope)[:, ::2, ::2]  # 128 px: enough with a given mouth box, and fast
    slow = np.interp(np.arange(audio.size) * 0.995, np.arange(audio.size), audio).astype(np.float32)
    box = tuple(v // 2 for v in MOUTH_BOX)
    drifting = measure_sync(frames, FPS, slow, SAMPLE_RATE, mouth_box=box)
    steady = measure_sync(frames, FPS, audio, SAMPLE_RATE, mouth_box=box)
    assert -400 <= drifting.drift_ms_per_min <= -220, drifting.windows
    assert abs(steady.drift_ms_per_min) <= 40, steady.windows
    assert len(drifting.windows) >= 3
    short = measure_sync(frames[:125], FPS, audio[: 5 * SAMPLE_RATE], SAMPLE_RATE, mouth_box=box)
    assert short.drift_ms_per_min is None  # 5 s cannot tell drift from noise


def test_no_audio_is_a_clear_error(tmp_path, clip):
    import torch

    from sonic.media.video import write_mp4

    path = write_mp4(tmp_path / "mute.mp4", torch.from_numpy(clip[0]), fps=FPS, preset="ultrafast")
    code, report, err = run_check_sync(path)
    assert code == 2 and report is None
    assert err.startswith("error:") and "no audio" in err


def test_no_face_is_a_clear_error(tmp_path, clip):
    import skimage.data
    import cv2

    _, audio = clip
    cat = cv2.resize(skimage.data.chelsea(), (SIZE, SIZE))
    path = write_clip(tmp_path / "cat.mp4", np.repeat(cat[None], 125, axis=0), audio)
    code, report, err = run_check_sync(path)
    assert code == 2 and report is None
    assert "no face" in err and "--mouth-box" in err


def test_missing_file_and_bad_mouth_box(tmp_path, clip):
    code, _, err = run_check_sync(tmp_path / "nothing.mp4")
    assert code == 2 and "not found" in err
    frames, audio = clip
    path = write_clip(tmp_path / "ok.mp4", frames, audio)
    code, _, err = run_check_sync(path, "--mouth-box", "1,2,3")
    assert code == 2 and "four numbers" in err
    code, report, _ = run_check_sync(path, "--mouth-box", ",".join(map(str, MOUTH_BOX)), "--require-sync")
    assert code == 0 and report["mouth_box"] == list(MOUTH_BOX) and report["in_sync"]


def test_plot_of_the_lag_curve(tmp_path, clip):
    import cv2

    frames, audio = clip
    path = write_clip(tmp_path / "clip.mp4", frames, audio)
    code, report, err = run_check_sync(path, "--plot", tmp_path / "curve.png", "--curves")
    assert code == 0, err
    assert len(report["lag_curve_ms"]) == len(report["lag_curve_r"]) == 21
    image = cv2.imread(str(tmp_path / "curve.png"))
    assert image is not None and image.shape[1] > image.shape[0] > 200 and image.std() > 10


def test_bad_plot_path_and_max_seconds_are_clear_errors(tmp_path, monkeypatch):
    """Checked before the video is read: one `error:` line, exit status 2, no OpenCV/ffmpeg traceback."""
    import sonic.media.probe

    def no_read(*args, **kwargs):
        raise AssertionError("the video was read before the arguments were checked")

    monkeypatch.setattr(sonic.media.probe, "read_video", no_read)
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    (tmp_path / "adir").mkdir()
    cases = [(("--plot", tmp_path / "adir"), "is a folder"), (("--plot", tmp_path / "curve"), "does not end in .png"),
             (("--plot", tmp_path / "missing" / "curve.png"), "does not exist"),
             (("--max-seconds", "-1"), "--max-seconds must be"), (("--max-seconds", "nan"), "--max-seconds must be"),
             (("--max-seconds", "0"), "--max-seconds must be")]
    for args, expected in cases:
        code, report, err = run_check_sync(video, *args)
        assert code == 2 and report is None, (args, err)
        assert err.startswith("error:") and expected in err and err.count("\n") == 1, (args, err)


def test_plot_write_failure_is_an_output_error(tmp_path, clip, monkeypatch):
    """A folder is refused before drawing; an OpenCV failure while writing becomes OutputError, not cv2.error."""
    from sonic.errors import OutputError
    from sonic.sync.measure import measure_sync, plot_lag_curves

    frames, audio = clip
    report = measure_sync(frames, FPS, audio, SAMPLE_RATE, mouth_box=MOUTH_BOX)
    with pytest.raises(OutputError, match="is a folder"):
        plot_lag_curves({"clip": report}, tmp_path)
    import cv2

    def failing_imwrite(*args, **kwargs):
        raise cv2.error("could not find a writer for the specified extension")

    monkeypatch.setattr(cv2, "imwrite", failing_imwrite)
    with pytest.raises(OutputError, match="could not write the plot"):
        plot_lag_curves({"clip": report}, tmp_path / "curve.png")


def test_command_line_entry_point_runs_as_a_process(tmp_path, clip):
    """`python -m sonic check-sync` prints one JSON line; exit status 3 asks for attention."""
    frames, audio = clip
    path = write_clip(tmp_path / "late.mp4", frames, offset_audio(audio, 240))
    done = subprocess.run([sys.executable, "-m", "sonic", "check-sync", str(path), "--require-sync"], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert done.returncode == 3, done.stderr  # 240 ms late: not in sync
    report = json.loads(done.stdout)
    assert abs(report["offset_ms"] - 240) <= 40


@pytest.mark.parametrize("kind", ["noise", "still noise", "flat colour"])
def test_video_without_a_face_is_the_no_face_error(tmp_path, clip, kind):
    """Haar fires on stray patterns (noise, upscaled 64 px frames): a stray box is not a face."""
    audio = clip[1][: int(2.4 * SAMPLE_RATE)]
    rng = np.random.default_rng(7)  # the former detector "found" a face on both noise videos of this seed
    shape = (60, 64, 64, 3)  # 2.4 s
    frames = {"noise": lambda: rng.integers(0, 256, shape, dtype=np.uint8),
              "still noise": lambda: np.repeat(rng.integers(0, 256, (1,) + shape[1:], dtype=np.uint8), shape[0], 0),
              "flat colour": lambda: np.full(shape, (120, 90, 200), np.uint8)}[kind]()
    path = write_clip(tmp_path / "faceless.mp4", frames, audio)
    code, report, err = run_check_sync(path)
    assert code == 2 and report is None, (report, err)
    assert err.startswith("error: no face found") and "--mouth-box" in err


@pytest.mark.parametrize("speaker", ["left", "right"])
def test_of_two_faces_the_speaker_is_measured(speaker):
    """Two copies of the portrait side by side, only one of them talking: whichever the detector
    ranks first, the face whose mouth follows the audio is the one measured."""
    from sonic.sync.measure import _analysis_frames, detect_face_boxes, measure_sync

    audio, envelope = speech_like_audio(5.0, seed=1)
    talking, still = talking_frames(envelope), talking_frames(envelope, static=True)
    frames = np.concatenate([talking, still] if speaker == "left" else [still, talking], axis=2)
    assert len(detect_face_boxes(_analysis_frames(frames)[0])) >= 2, "the detector should see both faces"
    report = measure_sync(frames, FPS, offset_audio(audio, 120)[None], SAMPLE_RATE)
    mouth_x = (report.mouth_box[0] + report.mouth_box[2]) / 2
    assert (mouth_x < SIZE) == (speaker == "left"), report.mouth_box
    assert abs(report.offset_ms - 120) <= 40 and report.confidence >= 5, report
