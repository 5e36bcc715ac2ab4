"""`python -m sonic generate | doctor | convert` on real files, read back from the MP4."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from helpers import FACE, speech_like

REPO = Path(__file__).resolve().parents[1]


def run_sonic(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-m", "sonic", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def media(tmp_path_factory, portrait):
    root = tmp_path_factory.mktemp("media")
    Image.fromarray(portrait).save(root / "portrait.png")
    for seconds in (0.3, 2.4, 31.0):
        stereo = np.stack([speech_like(seconds, 44_100, 1), speech_like(seconds, 44_100, 2)], axis=1)
        sf.write(root / f"speech_{seconds}.wav", stereo, 44_100, subtype="PCM_16")
    return root


def generate(zoo, media, out, seconds, *extra):
    box = ",".join(str(v) for v in FACE)
    return run_sonic("generate", "--models", zoo, "--image", media / "portrait.png",
                     "--audio", media / f"speech_{seconds}.wav", "--out", out, "--face-box", box,
                     "--min-resolution", 64, "--steps", 2, "--device", "cpu", "--quiet", *extra)


@pytest.mark.parametrize("seconds", [0.3, 2.4, 31.0])
def test_generate_writes_a_checked_mp4(tiny_zoo, media, tmp_path, seconds):
    from sonic.media.probe import probe, read_sonic_tags
    from sonic.media.video import sha256_file

    out = tmp_path / "talk.mp4"
    sync = ("--sync", "auto") if seconds == 2.4 else ()  # long enough to measure; the others stream
    result = generate(tiny_zoo, media, out, seconds, *sync)
    assert result.returncode == 0, result.stderr
    info = probe(out)
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert info["fps"] == pytest.approx(25.0)
    assert abs(info["frame_count"] - round(seconds * 25)) <= 1
    assert abs(info["video_duration"] - seconds) <= 1 / 25
    assert abs(info["audio_duration"] - info["video_duration"]) <= 1 / 25 + 0.03  # AAC frame granularity
    assert info["sample_rate"] == 44_100
    tags = read_sonic_tags(out)
    assert tags["ai_generated"] is True
    assert tags["image_sha256"] == sha256_file(media / "portrait.png")
    assert tags["audio_sha256"] == sha256_file(media / f"speech_{seconds}.wav")
    assert tags["parameters"]["inference_steps"] == 2
    assert "wrote" in result.stdout and "frames" in result.stdout
    if sync:  # the summary says what calibration did, as the MP4's tag records it
        entry = tags["postprocess"]["sync"]
        line = next(line for line in result.stdout.splitlines() if line.startswith("sync: "))
        assert f"confidence {entry['confidence']:g}" in line
        if entry["applied_shift_ms"] == 0.0 and "note" in entry:
            assert line.startswith("sync: not applied: confidence ")
        else:
            assert line.startswith(f"sync: soundtrack shifted by {entry['applied_shift_ms']:+.0f} ms")
    else:
        assert "sync:" not in result.stdout


def test_existing_output_is_not_overwritten(tiny_zoo, media, tmp_path):
    out = tmp_path / "keep.mp4"
    out.write_bytes(b"precious")
    result = generate(tiny_zoo, media, out, 0.3)
    assert result.returncode == 2
    assert "already exists" in result.stderr and "--overwrite" in result.stderr
    assert out.read_bytes() == b"precious"
    assert generate(tiny_zoo, media, out, 0.3, "--overwrite").returncode == 0
    assert out.read_bytes()[4:8] == b"ftyp"


def test_missing_weights_say_what_to_download(media, tmp_path):
    result = run_sonic("generate", "--models", tmp_path / "nothing", "--image", media / "portrait.png",
                       "--audio", media / "speech_0.3.wav", "--out", tmp_path / "x.mp4")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for name in ("unet.pth", "audio2token.pth", "audio2bucket.pth", "whisper-tiny", "stable-video-diffusion"):
        assert name in result.stderr
    assert not (tmp_path / "x.mp4").exists()


def test_bad_audio_is_one_clear_line(tiny_zoo, media, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    result = run_sonic("generate", "--models", tiny_zoo, "--image", media / "portrait.png", "--audio", broken,
                       "--out", tmp_path / "x.mp4", "--face-box", "18,20,54,60")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "broken.wav" in result.stderr
    assert not (tmp_path / "x.mp4").exists()


def test_doctor_reports_ok_and_missing(tiny_zoo, tmp_path):
    good = run_sonic("doctor", "--models", tiny_zoo)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = run_sonic("doctor", "--models", tmp_path)
    assert bad.returncode != 0
    assert "unet.pth" in bad.stdout + bad.stderr


def test_cheap_checks_come_before_any_model_loads(media, tmp_path, capsys):
    """Absurd settings and unusable output paths fail at once, even without any weights."""
    base = ["generate", "--models", tmp_path / "no-weights", "--image", media / "portrait.png",
            "--audio", media / "speech_0.3.wav"]
    (tmp_path / "folder.mp4").mkdir()
    cases = [(["--out", tmp_path / "a.mp4", "--crf", 99], "crf must be"),
             (["--out", tmp_path / "a.mp4", "--preset", "bogus"], "preset must be"),
             (["--out", tmp_path / "a.avi"], "must end in .mp4"),
             (["--out", tmp_path / "folder.mp4", "--overwrite"], "is not a file"),
             (["--out", media / "portrait.png" / "x.mp4"], "is a file, not a folder"),
             (["--out", tmp_path / "a.mp4", "--steps", 100000], "inference_steps"),
             (["--out", tmp_path / "a.mp4", "--dynamic-scale", "nan"], "dynamic_scale"),
             (["--out", tmp_path / "a.mp4", "--decode-chunk-size", 0], "decode_chunk_size")]
    from sonic.cli import main

    # In this process (the exit status and the one line are main()'s; one case also as a real process).
    for extra, message in cases:
        status = main([str(a) for a in (*base, *extra)])
        stderr = capsys.readouterr().err
        assert status == 2 and message in stderr and stderr.count("\n") == 1, (extra, stderr)
        assert "model file(s) missing" not in stderr
    result = run_sonic(*base, *cases[0][0])
    assert result.returncode == 2 and result.stderr.startswith("error: crf must be"), result.stderr
    # A negative coordinate is a value, not an option: the face-box check (before the weights) names it.
    result = run_sonic(*base, "--out", tmp_path / "a.mp4", "--face-box", "-5,0,60,70")
    assert result.returncode == 2 and "face_box '-5,0,60,70' is empty or negative" in result.stderr, result.stderr
    assert list(tmp_path.glob("*.mp4")) == [tmp_path / "folder.mp4"]


def test_sigterm_leaves_no_partial_output(tiny_zoo, media, tmp_path):
    import signal
    import time

    out = tmp_path / "long.mp4"
    box = ",".join(str(v) for v in FACE)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2")
    process = subprocess.Popen([sys.executable, "-m", "sonic", "generate", "--models", str(tiny_zoo), "--image",
                                str(media / "portrait.png"), "--audio", str(media / "speech_31.0.wav"), "--out", str(out),
                                "--face-box", box, "--min-resolution", "64", "--steps", "1", "--quiet"],
                               env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Signal once the half-written video exists in the run's scratch folder (the encoder is running):
        # that is what must be cleaned up.
        def temporary_videos():
            return sorted(tmp_path.glob(".sonic-partial/*/*.mp4"))

        deadline = time.monotonic() + 300
        while not temporary_videos() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it wrote a temporary file"
        assert temporary_videos() and not out.exists(), \
            f"no temporary video after {time.monotonic() - deadline + 300:.0f} s: {list(tmp_path.rglob('*'))}"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:  # never leave a generation running into later tests
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert "no output was written" in stderr
    assert list(tmp_path.iterdir()) == []


def test_sync_summary_lines():
    from sonic.commands.generate import postprocess_summary

    assert postprocess_summary({}) == []
    assert postprocess_summary({"sync": {"mode": "manual", "applied_shift_ms": 40.0}}) == [
        "sync: soundtrack shifted by +40 ms (given with --sync)"]
    assert postprocess_summary({"sync": {"mode": "auto", "measured_offset_ms": -120.0, "confidence": 7.5,
                                         "applied_shift_ms": -120.0}}) == [
        "sync: soundtrack shifted by -120 ms (measured mouth offset -120 ms, confidence 7.5)"]
    [line] = postprocess_summary({"sync": {"mode": "auto", "measured_offset_ms": 40.0, "confidence": 1.1,
                                           "applied_shift_ms": 0.0, "note": "not applied: confidence 1.1 < 3"}})
    assert line == "sync: not applied: confidence 1.1 < 3; measured mouth offset +40 ms, confidence 1.1"


def test_input_checks_that_need_the_inputs_name_the_cli_flags(tiny_zoo, media, tmp_path, capsys):
    """In-process (no model loads before these checks): the picture-size cap and a too-short clip for --sync auto."""
    from sonic.cli import main

    base = ["generate", "--models", str(tiny_zoo), "--image", str(media / "portrait.png"),
            "--audio", str(media / "speech_0.3.wav"), "--out", str(tmp_path / "x.mp4")]
    assert main([*base, "--max-image-pixels", "5000"]) == 2
    error = capsys.readouterr().err
    assert "72x80 = 5,760 pixels, above the picture-size limit of 5,000 pixels (--max-image-pixels)" in error
    assert "raise --max-image-pixels" in error
    assert main([*base, "--sync", "auto"]) == 2
    error = capsys.readouterr().err
    assert "--sync auto needs at least 2 s of audio" in error and "lasts 0.30 s" in error
    assert not (tmp_path / "x.mp4").exists()
