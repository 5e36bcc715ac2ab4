"""Issue 12, class 5: outputs cannot be lost. Exclusive publishing, scratch folders swept after
kill -9, ffmpeg dies with its parent, folder-writing tools refuse to replace files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hostile_helpers import REPO, assert_one_line_error, listing, run_python, run_sonic

# A child that writes `frames` slowly (one 32x32 frame every `pause` s) into OUT.
WRITER = """
import os, sys, time, numpy as np
from sonic.media.video import write_mp4
out, count, pause, overwrite = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
if len(sys.argv) > 5:  # start together with another writer (both past the "is the name free?" check)
    open(os.path.join(sys.argv[5], f"ready-{os.getpid()}"), "w").close()
    while not os.path.exists(os.path.join(sys.argv[5], "go")):
        time.sleep(0.02)
gate = os.environ.get("WRITER_GATE")  # after 10 frames, wait until this file exists
def frames():
    for i in range(count):
        time.sleep(pause)
        while gate and i == 10 and not os.path.exists(gate):
            time.sleep(0.05)
        yield np.full((1, 32, 32, 3), (i * 7) % 255, np.uint8)
try:
    write_mp4(out, frames(), fps=25, overwrite=overwrite, preset="ultrafast")
    print("wrote")
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_two_concurrent_writers_exactly_one_wins(tmp_path):
    out = tmp_path / "same.mp4"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    # Both check the name at the start (it is free), both finish while the other is still writing.
    start = tmp_path.parent / f"{tmp_path.name}-start"  # outside the folder whose listing is checked
    start.mkdir()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(out), "12", "0.05", "0", str(start)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    deadline = time.monotonic() + 60
    while len(list(start.glob("ready-*"))) < 2:  # both have imported sonic and wait
        assert time.monotonic() < deadline and all(w.poll() is None for w in writers)
        time.sleep(0.05)
    (start / "go").touch()
    results = [w.communicate(timeout=120) for w in writers]
    said = sorted(stdout.strip() for stdout, _ in results)
    assert said[1] == "wrote", results
    assert said[0].startswith("OutputError") and "another run" in said[0], results
    assert listing(tmp_path) == ["same.mp4"]  # no scratch folder, no partial file


def test_kill_9_leaves_a_scratch_folder_that_the_next_run_sweeps(tmp_path):
    out = tmp_path / "talk.mp4"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    victim = subprocess.Popen([sys.executable, "-c", WRITER, str(out), "100000", "0.02", "0"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scratch = tmp_path / ".sonic-partial"
    deadline = time.monotonic() + 60
    while not any(scratch.glob("*/video.mp4")) and not any(scratch.glob("*/final.mp4")):
        assert time.monotonic() < deadline, "the writer never started encoding"
        time.sleep(0.05)
    encoders = _children(victim.pid)
    assert encoders, "ffmpeg should be running under the writer"
    time.sleep(0.3)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not out.exists()
    assert any(p.is_dir() for p in scratch.iterdir()), "the killed run's scratch folder stays until the next run"
    # ffmpeg died with its parent (PR_SET_PDEATHSIG), it does not go on encoding
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in encoders):
        assert time.monotonic() < deadline, f"ffmpeg {encoders} outlived its killed parent"
        time.sleep(0.05)

    rerun = run_python(WRITER, tmp_path / "next.mp4", 3, 0, 0)
    assert rerun.stdout.strip() == "wrote", rerun.stderr
    assert listing(tmp_path) == ["next.mp4"]  # the dead run's hidden files are gone


def test_a_running_job_is_never_swept(tmp_path):
    """A second run in the same folder leaves the first one's (locked) scratch folder alone."""
    gate = tmp_path.parent / f"{tmp_path.name}-gate"  # outside the folder whose listing is checked
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", WRITER_GATE=str(gate))
    slow = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "slow.mp4"), "20", "0", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any((tmp_path / ".sonic-partial").glob("*/final.mp4")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    quick = run_python(WRITER, tmp_path / "quick.mp4", 2, 0, 0)
    assert quick.stdout.strip() == "wrote", quick.stderr
    assert slow.poll() is None, "the slow writer should still be running"
    gate.touch()
    stdout, stderr = slow.communicate(timeout=120)
    assert stdout.strip() == "wrote", stderr
    assert listing(tmp_path) == ["quick.mp4", "slow.mp4"]


def test_overwrite_replaces_and_refusal_keeps_the_old_file(tmp_path):
    import numpy as np

    from sonic.errors import OutputError
    from sonic.media.video import write_mp4

    out = tmp_path / "clip.mp4"
    out.write_bytes(b"precious")
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    with pytest.raises(OutputError, match="already exists"):
        write_mp4(out, frames, fps=25)
    assert out.read_bytes() == b"precious"
    write_mp4(out, frames, fps=25, overwrite=True)
    assert out.read_bytes()[4:8] == b"ftyp"
    assert listing(tmp_path) == ["clip.mp4"]


def test_make_tiny_zoo_refuses_to_replace_real_weights(tmp_path):
    dest = tmp_path / "models"
    (dest / "Sonic").mkdir(parents=True)
    (dest / "Sonic" / "unet.pth").write_bytes(b"the user's real UNet")
    outcome = run_sonic("make-tiny-zoo", dest)
    assert_one_line_error(outcome, "not empty", "--overwrite")
    assert (dest / "Sonic" / "unet.pth").read_bytes() == b"the user's real UNet"
    assert listing(dest) == ["Sonic", "Sonic/unet.pth"]  # nothing published, scratch removed
    forced = run_sonic("make-tiny-zoo", dest, "--overwrite")
    assert forced.returncode == 0, forced.stderr
    assert (dest / "Sonic" / "unet.pth").read_bytes() != b"the user's real UNet"
    assert not (dest / ".sonic-partial").exists()


def test_bench_keep_video_refuses_an_existing_file_before_benchmarking(tmp_path):
    kept = tmp_path / "kept.mp4"
    kept.write_bytes(b"old")
    outcome = run_sonic("bench", "--size", "tiny", "--keep-video", kept, "--device", "cpu")
    assert_one_line_error(outcome, "already exists")
    assert outcome.seconds < 60 and kept.read_bytes() == b"old"


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
