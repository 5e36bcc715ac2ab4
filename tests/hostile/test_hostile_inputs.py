"""Issue 12, classes 3 and 6: files that are not files, files that lie, and cheap checks first.

The CLI cases pass a models folder in which every file holds one garbage byte: the error must
name the input, not a damaged weights file, which proves the check ran before any weight was read."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hostile_helpers import (assert_one_line_error, lying_png, png_bytes, portrait, run_python, run_sonic, speech,
                             wav_bytes)



@pytest.fixture(scope="module")
def garbage_zoo(tiny_zoo, tmp_path_factory):
    """The tiny zoo's layout with every file one garbage byte: reading any of them would fail."""
    root = tmp_path_factory.mktemp("garbage") / "zoo"
    for path in Path(tiny_zoo).rglob("*"):
        target = root / path.relative_to(tiny_zoo)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"x")
    return root


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    (root / "face.png").write_bytes(png_bytes(portrait()))
    sf.write(root / "talk.wav", speech(1.0), 16_000)
    return root


@pytest.fixture(autouse=True)
def _models(garbage_zoo):
    global MODELS
    MODELS = garbage_zoo


MODELS = None


def generate(image, audio, out, *extra):
    return run_sonic("generate", "--models", MODELS, "--image", image, "--audio", audio, "--out", out,
                     "--device", "cpu", "--quiet", *extra, timeout=120)


# ------------------------------------------------------------------------------ not regular files
@pytest.mark.parametrize("role", ["image", "audio"])
def test_fifo_input_is_refused_without_blocking(good, tmp_path, role):
    fifo = tmp_path / f"pipe.{'png' if role == 'image' else 'wav'}"
    os.mkfifo(fifo)
    image, audio = (fifo, good / "talk.wav") if role == "image" else (good / "face.png", fifo)
    outcome = generate(image, audio, tmp_path / "out.mp4")
    assert_one_line_error(outcome, "named pipe", str(fifo))


def test_device_as_audio_is_refused(good, tmp_path):
    assert_one_line_error(generate(good / "face.png", "/dev/zero", tmp_path / "out.mp4"), "character device")


def test_fifo_weights_file_is_refused(tmp_path):
    from sonic.errors import WeightsError
    from sonic.weights.reading import read_state_dict

    os.mkfifo(tmp_path / "unet.pth")
    with pytest.raises(WeightsError, match="named pipe"):
        read_state_dict(tmp_path / "unet.pth", what="unet")


def test_fifo_config_is_refused(tmp_path):
    from sonic.errors import WeightsError
    from sonic.weights.loading import read_json

    os.mkfifo(tmp_path / "config.json")
    with pytest.raises(WeightsError, match="named pipe"):
        read_json(tmp_path / "config.json", "UNet")


# ------------------------------------------------------------------------------ files that lie
def test_png_promising_more_rows_than_it_holds(good, tmp_path):
    (tmp_path / "half.png").write_bytes(lying_png(72, 160, 80))
    outcome = generate(tmp_path / "half.png", good / "talk.wav", tmp_path / "out.mp4")
    assert_one_line_error(outcome, "truncated", "80 of 160 rows")


def test_cut_png_and_jpeg_are_image_errors(tmp_path):
    from PIL import Image

    from sonic.errors import ImageError
    from sonic.inputs.portrait import load_image

    data = png_bytes(portrait(128, 128))
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    Image.fromarray(portrait(128, 128)).save(tmp_path / "full.jpg")
    jpeg = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    for name in ("cut.png", "cut.jpg"):
        with pytest.raises(ImageError, match="truncated"):
            load_image(tmp_path / name)


def test_wav_header_claiming_4_hz_is_refused_at_once(good, tmp_path):
    (tmp_path / "slow.wav").write_bytes(wav_bytes(speech(1.0), 16_000, header_rate=4))
    outcome = generate(good / "face.png", tmp_path / "slow.wav", tmp_path / "out.mp4")
    assert_one_line_error(outcome, "4 Hz", "not plausible")


def test_truncated_flac_is_refused(tmp_path):
    from sonic.errors import AudioError
    from sonic.inputs.audio import load_audio

    sf.write(tmp_path / "talk.flac", speech(4.0, seed=1) + 0.05 * np.random.default_rng(0).standard_normal(64_000)
             .astype(np.float32), 16_000)
    data = (tmp_path / "talk.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match="truncated"):
        load_audio(tmp_path / "cut.flac")


@pytest.mark.parametrize("value", [1e30, float("nan")])
def test_absurd_sample_values_are_caught_at_load(tmp_path, value):
    from sonic.errors import AudioError
    from sonic.inputs.audio import load_audio

    samples = speech(1.0)
    samples[100] = value
    (tmp_path / "odd.wav").write_bytes(wav_bytes(samples, 16_000, float32=True))
    with pytest.raises(AudioError, match="absurd|NaN"):
        load_audio(tmp_path / "odd.wav")


TWO_HOURS_FLAC = """
import sys, numpy as np, soundfile as sf
from hostile_helpers import speech
rate, seconds = 8000, float(sys.argv[2])
with sf.SoundFile(sys.argv[1], "w", samplerate=rate, channels=1, format="FLAC") as f:
    f.write(speech(2.0, rate))
    block = np.zeros(rate * 60, np.float32)
    for _ in range(int((seconds - 2) // 60)):
        f.write(block)
"""

LOAD = """
import sys, time
from sonic.inputs.audio import load_audio
duration = float(sys.argv[2]) or None
started = time.monotonic()
try:
    clip = load_audio(sys.argv[1], duration=duration)
    print(f"ok {clip.seconds:.2f}")
except Exception as exc:
    print(type(exc).__name__, exc)
print(f"seconds {time.monotonic() - started:.2f}", file=sys.stderr)
"""


def test_long_flac_reads_only_what_duration_asks_and_is_capped(tmp_path):
    """2 h 1 min of FLAC (mostly digital silence, a few MB): --duration 1 decodes about 2 s;
    the whole file is refused from its header, before decoding."""
    import sys

    here = str(Path(__file__).parent)
    path = tmp_path / "long.flac"
    made = run_python(f"import sys; sys.path.insert(0, {here!r})\n" + TWO_HOURS_FLAC, path, 7260, timeout=300)
    assert made.returncode == 0, made.stderr
    baseline = run_python("import sonic.inputs.audio, numpy, soxr, soundfile")
    short = run_python(LOAD, path, 1.0)
    assert short.stdout.startswith("ok 1.00"), short.stdout + short.stderr
    whole = run_python(LOAD, path, 0)
    assert whole.stdout.startswith("AudioError") and "limit" in whole.stdout, whole.stdout
    # Decoding 2 hours at 8 kHz would hold 230 MB of float32 samples (and more while resampling).
    for outcome in (short, whole):
        assert outcome.peak_mb - baseline.peak_mb < 60, (outcome.peak_mb, baseline.peak_mb, outcome.stderr)
        assert float(outcome.stderr.split("seconds")[-1]) < 2.0
    print(f"long FLAC peaks: baseline {baseline.peak_mb:.0f} MB, --duration 1 {short.peak_mb:.0f} MB, "
          f"refused whole {whole.peak_mb:.0f} MB", file=sys.stderr)


# ------------------------------------------------------------------------------ cheap checks first
@pytest.mark.parametrize("box, words", [
    ("10,10,500,60", ["inside the 72x80 picture"]),
    ("54,60,18,20", ["x1 < x2"]),
    ("nan,1,2,3", ["four numbers"]),
])
def test_face_box_mistakes_fail_before_any_model(good, tmp_path, box, words):
    outcome = generate(good / "face.png", good / "talk.wav", tmp_path / "out.mp4", "--face-box", box)
    assert_one_line_error(outcome, *words)
    assert "model" not in outcome.stderr.lower()


def test_face_index_mistakes_fail_before_any_model(good, tmp_path):
    assert_one_line_error(generate(good / "face.png", good / "talk.wav", tmp_path / "o.mp4", "--face-index", "-1"),
                          "--face-index")
    assert_one_line_error(generate(good / "face.png", good / "talk.wav", tmp_path / "o.mp4", "--face-index", "0",
                                   "--face-box", "1,1,20,20"), "not both")


def test_pixel_cap_is_checked_from_the_header(good, tmp_path):
    (tmp_path / "huge.png").write_bytes(lying_png(20_000, 20_000, 1))
    outcome = generate(tmp_path / "huge.png", good / "talk.wav", tmp_path / "out.mp4")
    assert_one_line_error(outcome, "megapixels")
    assert outcome.seconds < 30


def test_audio_cap_flag(good, tmp_path):
    outcome = generate(good / "face.png", good / "talk.wav", tmp_path / "out.mp4", "--max-audio-seconds", "0.5")
    assert_one_line_error(outcome, "--max-audio-seconds", "--duration")
