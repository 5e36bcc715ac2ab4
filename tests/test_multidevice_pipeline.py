"""The whole pipeline and the CLI over several devices (threads over cpu,cpu; torchrun with 2 gloo ranks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
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
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    # The one-device and the threads runs at the same time (one core each), then torchrun alone.
    runs = [subprocess.Popen([sys.executable, "-m", "sonic", *generate_args(tiny_zoo, media, folder / "talk.mp4"),
                              *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
            for folder, extra in ((single, ("--device", "cpu")), (threads, ("--devices", "cpu,cpu")))]
    (_, single_err), (threads_out, threads_err) = [run.communicate(timeout=300) for run in runs]
    assert runs[0].returncode == 0, single_err
    assert runs[1].returncode == 0, threads_err
    assert "spread: 2 windows/step over 2 devices: " in threads_out
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


def rank_pids(launcher_pid: int) -> dict[int, int]:
    """torchrun's worker processes by rank (read from their environment)."""
    found = {}
    for child in Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split():
        env = dict(item.split("=", 1) for item in Path(f"/proc/{child}/environ").read_text().split("\0") if "=" in item)
        found[int(env["RANK"])] = int(child)
    return found


def test_interrupting_one_torchrun_rank_stops_every_rank_without_output(tiny_zoo, tmp_path):
    """SIGINT to rank 1 mid-sampling: both ranks exit 130 with one line each, and no MP4 is left."""
    media = tmp_path / "media"
    media.mkdir()
    Image.fromarray(np.full((80, 72, 3), 120, np.uint8)).save(media / "portrait.png")
    sf.write(media / "speech.wav", speech_like(6.0), SR, subtype="PCM_16")  # 75 frames: 3 windows
    args = generate_args(tiny_zoo, media, tmp_path / "talk.mp4")
    args = [a for a in args if a != "--quiet"]
    args[args.index("--steps") + 1] = "200"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                                 "2", "-m", "sonic", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, cwd=ROOT, text=True)
    lines: list[str] = []  # pieces of rank 0's stderr (progress bars redraw with CR, not LF)
    reader = threading.Thread(target=lambda: lines.extend(iter(lambda: launcher.stderr.read(64), "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while "sample:" not in "".join(lines) and time.monotonic() < deadline:
            assert launcher.poll() is None, "".join(lines)[-3000:]
            time.sleep(0.2)
        assert "sample:" in "".join(lines), "sampling never started: " + "".join(lines)[-3000:]
        time.sleep(1.0)  # well inside the 200 steps
        os.kill(rank_pids(launcher.pid)[1], signal.SIGINT)
        launcher.wait(timeout=60)
    finally:
        launcher.kill()
    reader.join(timeout=10)
    text = "".join(lines).replace("\r", "\n")
    assert launcher.returncode != 0
    assert "rank 1: interrupted: no output was written" in text
    assert "\ninterrupted (cancelled on rank 1: every rank stopped): no output was written" in text \
        or "\ninterrupted: no output was written" in text  # a SIGTERM from torchrun when rank 1 left first
    assert text.count("exitcode  : 130") == 2  # torchrun's summary of its workers
    assert text.count("Traceback (most recent call last)") <= 1  # torchrun's own ChildFailedError, none of ours
    assert list(tmp_path.glob("*.mp4")) == [] and not any(p.name.startswith(".") for p in tmp_path.iterdir())
