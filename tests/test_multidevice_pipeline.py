"""The whole pipeline and the CLI over several devices (threads over cpu,cpu; torchrun with 2 gloo ranks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from helpers import FACE, SR, speech_like
from sonic import SonicPipeline

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(face_box=FACE, min_resolution=64, inference_steps=2, seed=1)


@pytest.fixture(scope="module")
def media(tmp_path_factory, portrait):
    root = tmp_path_factory.mktemp("media")
    Image.fromarray(portrait).save(root / "portrait.png")
    sf.write(root / "speech.wav", speech_like(2.4), SR, subtype="PCM_16")  # 30 frames: 2 windows
    return root


def test_threads_over_two_devices_give_the_serial_frames(tiny_zoo, portrait, torch_threads):
    audio = (speech_like(2.4), SR)
    serial = SonicPipeline.from_pretrained(tiny_zoo, device="cpu", dtype="fp32", face_detector=False)
    spread = SonicPipeline.from_pretrained(tiny_zoo, devices=["cpu", "cpu"], dtype="fp32", face_detector=False)
    assert spread.executor.kind == "threads" and spread.device == torch.device("cpu")
    # decode chunks of 4 frames: 8 chunks in rounds of 2 (split decode), the last one shorter
    one = serial(portrait, audio, decode_chunk_size=4, **SMALL)
    two = spread(portrait, audio, decode_chunk_size=4, **SMALL)
    assert torch.equal(one.frames, two.frames) and one.frames.shape[0] == 60  # RIFE batches split too
    assert sum(spread.executor.unit_counts.values()) == 2 * 2  # 2 windows x 2 steps, decode not counted
    dpm = spread(portrait, audio, sampler="dpmpp_2m", interpolate=False, **SMALL)
    assert torch.equal(dpm.frames, serial(portrait, audio, sampler="dpmpp_2m", interpolate=False, **SMALL).frames)
    assert not torch.equal(dpm.frames, serial(portrait, audio, interpolate=False, **SMALL).frames)


def sonic_command(*args: str, launcher=(sys.executable, "-m", "sonic")) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([*launcher, *args], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)


def generate_args(zoo, media, out) -> list[str]:
    return ["generate", "--models", str(zoo), "--image", str(media / "portrait.png"), "--audio",
            str(media / "speech.wav"), "--out", str(out), "--face-box", ",".join(map(str, FACE)),
            "--min-resolution", "64", "--steps", "2", "--quiet", "--decode-chunk-size", "4",
            "--preset", "ultrafast"]


def frames_of(path: Path) -> np.ndarray:
    from sonic.media.probe import read_video

    return read_video(path)[0]


def test_cli_devices_and_torchrun_write_one_identical_mp4(tiny_zoo, media, tmp_path):
    """Split sampling, split decode (8 chunks of 4 frames) and split RIFE (60 frames from 4 batches)."""
    single, threads, ranks = tmp_path / "single", tmp_path / "threads", tmp_path / "ranks"
    for folder in (single, threads, ranks):
        folder.mkdir()
    done = sonic_command(*generate_args(tiny_zoo, media, single / "talk.mp4"), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    done = sonic_command(*generate_args(tiny_zoo, media, threads / "talk.mp4"), "--devices", "cpu,cpu")
    assert done.returncode == 0, done.stderr
    assert "spread: 2 windows/step over 2 devices: " in done.stdout
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "sonic")
    done = sonic_command(*generate_args(tiny_zoo, media, ranks / "talk.mp4"), launcher=torchrun)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1 and "spread: 2 windows/step over 2 devices: 1+1" in done.stdout
    assert [p.name for p in ranks.iterdir()] == ["talk.mp4"]  # one file, no leftovers from rank 1
    reference = frames_of(single / "talk.mp4")
    assert np.array_equal(frames_of(threads / "talk.mp4"), reference)
    assert np.array_equal(frames_of(ranks / "talk.mp4"), reference)
    assert reference.shape[0] == 60  # 30 frames doubled by RIFE


def test_bad_devices_are_one_line_before_loading(media, tmp_path):
    done = sonic_command(*generate_args(tmp_path / "nowhere", media, tmp_path / "x.mp4"), "--devices", "cpu,tpu:3")
    assert done.returncode == 2
    assert done.stderr.startswith("error:") and done.stderr.count("\n") == 1
