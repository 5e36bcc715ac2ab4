"""The README's commands work as written (paths under /tmp moved into a test folder)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def bash_blocks() -> list[list[str]]:
    """Commands of each ```bash block (continuation lines joined)."""
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    return [[line for line in block.replace("\\\n", " ").splitlines() if line.strip()] for block in blocks]


def run(command: str, cwd: Path, tmp: Path) -> subprocess.CompletedProcess:
    args = shlex.split(command.replace("/tmp/", f"{tmp}/"))
    assert args[0] == "python", command
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def test_readme_has_setup_and_test_commands():
    setup, *_ = bash_blocks()
    assert setup[0].startswith("pip install -e .")
    assert setup[1].startswith("python -m sonic generate")
    assert ["python -m pytest -q"] in bash_blocks()
    ci = (REPO / ".ci" / "run").read_text()
    assert "python -m pytest -q" in ci  # CI runs the README's test command


def test_main_job_without_weights_says_what_to_download(tmp_path):
    setup = bash_blocks()[0]
    result = run(setup[1], cwd=tmp_path, tmp=tmp_path)  # no checkpoints/ folder here
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for name in ("Sonic/unet.pth", "Sonic/audio2token.pth", "whisper-tiny", "stable-video-diffusion-img2vid-xt",
                 "LeonJoe13/Sonic"):
        assert name in result.stderr, name


def test_tiny_zoo_commands_make_a_video(tmp_path):
    from sonic.media.probe import probe

    block = next(b for b in bash_blocks() if any("make-tiny-zoo" in line for line in b))
    for command in block:
        result = run(command, cwd=REPO, tmp=tmp_path)
        assert result.returncode == 0, result.stderr
    info = probe(tmp_path / "sonic-tiny.mp4")
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert abs(info["video_duration"] - info["audio_duration"]) <= 1 / 25 + 0.03
