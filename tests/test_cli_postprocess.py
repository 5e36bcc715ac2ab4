"""`python -m sonic generate` with every post-processing flag, read back from the MP4 it writes.

The CLI's `main` runs in this process (it is all `python -m sonic` does besides `sys.exit`):
a subprocess would import torch/diffusers/transformers again, several seconds for nothing new
(tests/test_cli.py already runs the real `python -m sonic` entry point).
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from helpers import FACE, speech_like

SECONDS = 2.4  # lip-sync measurement needs at least 2 s; 2.4 s = 30 frames at 12.5 fps, 72 at 30 fps
OUTPUT_FPS = 30


def run_sonic(*args) -> int:
    """`python -m sonic ARGS` in this process; the SIGTERM handler the CLI installs is put back after."""
    from sonic.cli import main

    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        return main([str(a) for a in args])
    finally:
        signal.signal(signal.SIGTERM, sigterm)


@pytest.fixture
def odd_portrait(tmp_path, portrait) -> Path:
    """The test portrait grown to 73x81 px: paste-back must round the photo's size down to even sides."""
    path = tmp_path / "portrait_73x81.png"
    Image.fromarray(np.pad(portrait, ((0, 1), (0, 1), (0, 0)), mode="edge")).save(path)
    return path


@pytest.fixture
def stereo_speech(tmp_path) -> Path:
    path = tmp_path / "speech.wav"
    stereo = np.stack([speech_like(SECONDS, 44_100, 1), speech_like(SECONDS, 44_100, 2)], axis=1)
    sf.write(path, stereo, 44_100, subtype="PCM_16")
    return path


def test_generate_with_every_postprocess_flag(tiny_zoo, odd_portrait, stereo_speech, tmp_path, torch_threads, capsys):
    from sonic.media.probe import probe, read_sonic_tags

    out = tmp_path / "talk.mp4"
    status = run_sonic("generate", "--models", tiny_zoo, "--image", odd_portrait, "--audio", stereo_speech,
                       "--out", out, "--face-box", ",".join(str(v) for v in FACE), "--min-resolution", 64,
                       "--steps", 2, "--device", "cpu", "--quiet",
                       "--sync", "auto", "--smooth", 0.5, "--color-match", "--paste-back",
                       "--output-fps", OUTPUT_FPS)
    printed = capsys.readouterr()
    assert status == 0, printed.err
    info = probe(out)
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    # Pasted back into the 73x81 photo: its size with both sides rounded down to even numbers.
    assert (info["width"], info["height"]) == (72, 80)
    assert info["fps"] == pytest.approx(OUTPUT_FPS)
    assert info["frame_count"] == round(SECONDS * OUTPUT_FPS)
    assert info["video_duration"] == pytest.approx(SECONDS, abs=1 / OUTPUT_FPS)
    assert abs(info["audio_duration"] - info["video_duration"]) <= 1 / OUTPUT_FPS + 0.03  # AAC frame granularity
    assert (info["sample_rate"], info["audio_channels"]) == (44_100, 2)  # the original soundtrack
    assert f"{round(SECONDS * OUTPUT_FPS)} frames at {OUTPUT_FPS} fps" in printed.out and "72x80 px" in printed.out

    # The MP4's provenance tag records what each step did.
    steps = read_sonic_tags(out)["postprocess"]
    assert steps["colour_match"]["applied"] is True
    assert steps["smoothing"]["strength"] == 0.5
    assert steps["sync"]["mode"] == "auto" and "applied_shift_ms" in steps["sync"]
    assert steps["fps"]["from"] == 25.0 and steps["fps"]["to"] == OUTPUT_FPS
    assert (steps["fps"]["frames_before"], steps["fps"]["frames_after"]) == (round(SECONDS * 25),
                                                                             round(SECONDS * OUTPUT_FPS))
    assert steps["paste_back"]["size"] == [72, 80]
