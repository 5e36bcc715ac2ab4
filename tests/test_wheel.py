"""The package as a user installs it: a wheel built from the sources, installed into a fresh
virtual environment and run outside the source tree (so no tests/fixtures can help) makes a
tiny zoo, passes `doctor` on it and generates a video from it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from helpers import FACE, SR, speech_like
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
WHEEL_SOURCES = ("pyproject.toml", "README.md", "LICENSE", "sonic")  # what the build reads


def _run(args, *, cwd, env=None, timeout=300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args[1:4]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def _build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of the sources: an in-tree build would write build/ and *.egg-info into the checkout."""
    source = tmp_path / "source"
    source.mkdir()
    for name in WHEEL_SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", tmp_path / "dist", source], cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("comfyui_sonic-*.whl")
    return wheel


def _install(wheel: Path, venv: Path, env: dict) -> Path:
    """A venv holding only the wheel; torch & co. come from this interpreter's site-packages, listed
    in a .pth file (after the venv's own packages; their .pth files, e.g. an editable install of this
    checkout, are not processed)."""
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv.parent, env=env)
    python = venv / "bin" / "python"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=venv.parent, env=env).stdout.strip())
    dependencies = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    (purelib / "sonic_test_dependencies.pth").write_text("\n".join(dependencies) + "\n")
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q", wheel],
         cwd=venv.parent, env=env)
    return python


@pytest.mark.slow
def test_installed_wheel_makes_a_tiny_zoo_and_a_video(tmp_path, portrait):
    from sonic.media.probe import probe

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    python = _install(_build_wheel(tmp_path), tmp_path / "venv", env)
    work = tmp_path / "work"  # outside the checkout: nothing of the sources is importable from here
    work.mkdir()
    where = _run([python, "-c", "import sonic; print(sonic.__file__)"], cwd=work, env=env).stdout.strip()
    assert Path(where).is_relative_to(tmp_path / "venv"), where

    sonic = [python, "-m", "sonic"]
    made = _run([*sonic, "make-tiny-zoo", "zoo"], cwd=work, env=env)
    assert "zoo" in made.stdout
    assert (work / "zoo" / "yoloface_v5m.pt").is_file()
    doctor = _run([*sonic, "doctor", "--models", "zoo"], cwd=work, env=env)
    assert doctor.stdout.count("\nok ") >= 7 and "all required weights load" in doctor.stdout, doctor.stdout

    Image.fromarray(portrait).save(work / "portrait.png")
    sf.write(work / "speech.wav", speech_like(0.4), SR, subtype="PCM_16")
    _run([*sonic, "generate", "--models", "zoo", "--image", "portrait.png", "--audio", "speech.wav",
          "--out", "talk.mp4", "--face-box", ",".join(str(v) for v in FACE), "--min-resolution", 64,
          "--steps", 1, "--device", "cpu", "--quiet"], cwd=work, env=env)
    info = probe(work / "talk.mp4")
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert abs(info["frame_count"] - 10) <= 1 and info["fps"] == pytest.approx(25.0)  # 0.4 s at 25 fps (RIFE ran)
