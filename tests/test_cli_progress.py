"""What `python -m sonic generate` shows on a terminal while it works: one bar per stage, a sane rate in
the stage's own unit, and a total bar with the ETA of the whole run (a real tiny run under a pty)."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf
from PIL import Image

from helpers import FACE, speech_like

REPO = Path(__file__).resolve().parents[1]
STAGE_LABELS = ("encode", "sample", "decode", "interpolate")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
COUNT = re.compile(r"^(\w+):\s+\d+%\|[^|]*\|\s+(\d+)/(\d+) \[")
PER_SECOND = re.compile(r", ([\d.]+) ?[A-Za-z][\w ]*/s\]")  # '2.5 frames/s]' (slower stages show 's/unit')


def run_in_terminal(args: list[str], timeout: float = 600) -> tuple[int, str]:
    """Run with stderr on a pseudo-terminal (as a user sees it); returns (exit code, what the terminal got)."""
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120 x 40 terminal
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2", COLUMNS="120")
    process = subprocess.Popen([sys.executable, "-m", "sonic", *args], stdout=subprocess.DEVNULL, stderr=slave,
                               stdin=subprocess.DEVNULL, env=env, cwd=REPO)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed its side
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    return process.returncode, b"".join(chunks).decode(errors="replace")


def screen_lines(text: str) -> list[str]:
    """Every state a bar was drawn in, cursor movements removed."""
    return [line.strip() for line in re.split(r"[\r\n]+", ANSI.sub("", text)) if line.strip()]


def test_generate_shows_one_bar_per_stage_with_sane_rates_and_a_total_eta(tiny_zoo, tmp_path, portrait):
    Image.fromarray(portrait).save(tmp_path / "portrait.png")
    sf.write(tmp_path / "speech.wav", speech_like(1.2, 16_000), 16_000)
    # 1.2 s: 15 generated frames, so decode (two chunks of 8) and interpolation take turns while streaming.
    code, text = run_in_terminal(["generate", "--models", str(tiny_zoo), "--image", str(tmp_path / "portrait.png"),
                                  "--audio", str(tmp_path / "speech.wav"), "--out", str(tmp_path / "o.mp4"),
                                  "--face-box", ",".join(map(str, FACE)), "--min-resolution", "64", "--steps", "2",
                                  "--device", "cpu"])
    assert code == 0, text[-3000:]
    lines = screen_lines(text)
    counts: dict[str, list[tuple[int, int]]] = {label: [] for label in STAGE_LABELS}
    for line in lines:
        match = COUNT.match(line)
        if match and match.group(1) in counts:
            counts[match.group(1)].append((int(match.group(2)), int(match.group(3))))
            rate = PER_SECOND.search(line)
            if rate:  # a stage at 64 px takes milliseconds at least; a bar started just now shows millions
                assert float(rate.group(1)) < 1e4, f"absurd rate: {line}"
    for label, seen in counts.items():
        assert seen, f"no {label} bar:\n" + "\n".join(lines[-40:])
        done = [n for n, _ in seen]
        assert done == sorted(done), f"the {label} bar restarted (a new bar starts at 0 again): {done}"
        assert len({total for _, total in seen}) == 1 and done[-1] == seen[-1][1], f"{label}: {seen}"
    assert counts["interpolate"][-1][1] == 2 * counts["decode"][-1][1]
    totals = [line for line in lines if line.startswith("total:")]
    assert any(re.search(r"<\d\d:\d\d\]", line) for line in totals[:-1]), f"no ETA on the total bar: {totals}"
    assert totals[-1].startswith("total: 100%"), totals[-3:]
