"""Issue 12, class 2 (one error boundary) and class 6 (weights checked on load): user- and
environment-caused failures end in one line and exit status 2; a bug keeps its traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import soundfile as sf
import torch

from hostile_helpers import assert_one_line_error, png_bytes, portrait, run_python, run_sonic, speech


@pytest.fixture()
def zoo_copy(tiny_zoo, tmp_path):
    """A private copy of the tiny zoo to damage."""
    return Path(shutil.copytree(tiny_zoo, tmp_path / "zoo"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    (root / "face.png").write_bytes(png_bytes(portrait()))
    sf.write(root / "talk.wav", speech(1.0), 16_000)
    return root


def generate(models, inputs, out, *extra):
    return run_sonic("generate", "--models", models, "--image", inputs / "face.png", "--audio", inputs / "talk.wav",
                     "--out", out, "--face-box", "18,20,54,60", "--min-resolution", 64, "--steps", 1,
                     "--no-interpolate", "--device", "cpu", "--quiet", *extra)


def test_int8_unet_weights_are_one_line(zoo_copy, inputs, tmp_path):
    unet = zoo_copy / "Sonic" / "unet.pth"
    state = torch.load(unet, weights_only=True)
    torch.save({k: v.to(torch.int8) for k, v in state.items()}, unet)
    outcome = generate(zoo_copy, inputs, tmp_path / "out.mp4")
    assert_one_line_error(outcome, "int8", "unet")
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("dtype", [torch.bool, torch.int64])
def test_non_float_weights_are_a_weights_error(zoo_copy, dtype):
    from sonic.errors import WeightsError
    from sonic.weights import find_model_files
    from sonic.weights.loading import load_audio2token

    path = zoo_copy / "Sonic" / "audio2token.pth"
    state = torch.load(path, weights_only=True)
    torch.save({k: v.to(dtype) for k, v in state.items()}, path)
    with pytest.raises(WeightsError, match=str(dtype).replace("torch.", "")):
        load_audio2token(find_model_files(zoo_copy, need_interpolation=False, need_face_detector=False))


def test_nan_weights_are_refused_on_load(zoo_copy):
    from sonic.errors import WeightsError
    from sonic.weights import find_model_files
    from sonic.weights.loading import load_audio2bucket, load_whisper

    path = zoo_copy / "Sonic" / "audio2bucket.pth"
    state = torch.load(path, weights_only=True)
    key = sorted(state)[0]
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    torch.save(state, path)
    files = find_model_files(zoo_copy, need_interpolation=False, need_face_detector=False)
    _, width = load_whisper(files)
    with pytest.raises(WeightsError, match=f"NaN or infinite values in {key}"):
        load_audio2bucket(files, width)


def test_config_that_is_not_json_is_one_line(zoo_copy, inputs, tmp_path):
    (zoo_copy / "stable-video-diffusion-img2vid-xt" / "unet" / "config.json").write_text("{not json")
    outcome = generate(zoo_copy, inputs, tmp_path / "out.mp4")
    assert_one_line_error(outcome, "UNet config", "cannot be read")


@pytest.mark.parametrize("change", [
    lambda data: [1, 2, 3],
    lambda data: {**data, "num_attention_heads": 0},
    lambda data: {k: v for k, v in data.items() if k != "block_out_channels"},
    lambda data: {**data, "layers_per_block": "two"},
])
def test_config_of_the_wrong_shape_is_a_weights_error(zoo_copy, change):
    from sonic.errors import WeightsError
    from sonic.weights import find_model_files
    from sonic.weights.loading import load_unet

    config = zoo_copy / "stable-video-diffusion-img2vid-xt" / "unet" / "config.json"
    config.write_text(json.dumps(change(json.loads(config.read_text()))))
    with pytest.raises(WeightsError, match="UNet config"):
        load_unet(find_model_files(zoo_copy, need_interpolation=False, need_face_detector=False))


def test_malformed_scheduler_config_fails_at_load_not_at_sampling(zoo_copy):
    from sonic.errors import SonicError
    from sonic.weights import find_model_files
    from sonic.weights.loading import read_scheduler_config

    path = find_model_files(zoo_copy, need_interpolation=False, need_face_detector=False).scheduler_config
    path.write_text(json.dumps({"sigma_min": "tiny", "sigma_max": 700}))
    with pytest.raises(SonicError, match="scheduler config"):
        read_scheduler_config(path)


def test_cpu_out_of_memory_is_one_line():
    code = ("import sys, torch\nfrom sonic.cli import guarded\n"
            "sys.exit(guarded(lambda: torch.empty(2 ** 50, dtype=torch.uint8), debug=False))")
    outcome = run_python(code)
    assert_one_line_error(outcome, "ran out of memory")


def test_a_bug_keeps_its_traceback_and_debug_shows_everything():
    bug = run_python("import sys\nfrom sonic.cli import guarded\n"
                     "def broken():\n    assert 1 + 1 == 3, 'internal invariant'\n"
                     "sys.exit(guarded(broken, debug=False))")
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "internal invariant" in bug.stderr
    debug = run_python("import sys\nfrom sonic.cli import guarded\n"
                       "def full():\n    raise OSError(28, 'No space left on device', '/x/out.mp4')\n"
                       "sys.exit(guarded(full, debug=True))")
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    plain = run_python("import sys\nfrom sonic.cli import guarded\n"
                       "def full():\n    raise OSError(28, 'No space left on device', '/x/out.mp4')\n"
                       "sys.exit(guarded(full, debug=False))")
    assert_one_line_error(plain, "no space left", "/x/out.mp4", "disk is full")


def test_name_too_long_fails_before_the_job(inputs, tmp_path):
    out = tmp_path / ("n" * 300 + ".mp4")
    outcome = generate(tmp_path / "no-models-here", inputs, out)  # the models folder is never looked at
    assert_one_line_error(outcome, "255 bytes")
    assert outcome.seconds < 30


def test_disk_full_while_writing_is_one_line(tiny_zoo, inputs, tmp_path):
    """A real full disk: a 64 kB tmpfs (needs root and mount, as on CI)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        outcome = generate(tiny_zoo, inputs, disk / "out.mp4")
        line = assert_one_line_error(outcome)
        assert "space" in line.lower() or "disk" in line.lower(), line
        assert os.listdir(disk) == []  # no partial output, no scratch folder
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_failure_messages_cover_the_environment():
    from sonic.errors import AudioError, failure_message

    assert failure_message(AudioError("bad audio")) == "bad audio"
    assert "too long" in failure_message(OSError(36, "File name too long", "x" * 300))
    assert "valid JSON" in failure_message(json.JSONDecodeError("Expecting value", "{", 1))
    assert "UTF-8" in failure_message(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"))
    assert failure_message(AssertionError("bug")) is None
    assert failure_message(KeyError("bug")) is None
