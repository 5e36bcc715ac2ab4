"""`python -m sonic download` against real local hubs (no network).

olah, a Hugging Face mirror, serves the tiny zoo as three git repositories in offline mode
(tests/tiny_hub.py); tests/hub_server.py is a small hub for what olah cannot show: byte-range
resumption and a gated repository. Every download runs the real CLI in a subprocess with
HF_ENDPOINT pointing at the local hub and an empty HF_HOME (no token).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hub_server import HubServer
from tiny_hub import NEVER_FETCHED, OlahHub, build_tiny_hub

REPO_ROOT = Path(__file__).resolve().parent.parent
SONIC, SVD, WHISPER = "LeonJoe13/Sonic", "stabilityai/stable-video-diffusion-img2vid-xt", "openai/whisper-tiny"
SVD_DIR, WHISPER_DIR = "stable-video-diffusion-img2vid-xt", "whisper-tiny"

# (path in the Sonic weights folder, repository, path in the repository): exactly what must arrive.
SVD_FILES = ["vae/config.json", "vae/diffusion_pytorch_model.safetensors", "image_encoder/config.json",
             "image_encoder/model.safetensors", "unet/config.json", "scheduler/scheduler_config.json"]
WHISPER_FILES = ["config.json", "model.safetensors", "preprocessor_config.json"]
COMMON = [(f"{SVD_DIR}/{n}", SVD, n) for n in SVD_FILES] + [(f"{WHISPER_DIR}/{n}", WHISPER, n) for n in WHISPER_FILES]
OFFICIAL = [("Sonic/unet.pth", SONIC, "Sonic/unet.pth"), ("Sonic/audio2token.pth", SONIC, "Sonic/audio2token.pth"),
            ("Sonic/audio2bucket.pth", SONIC, "Sonic/audio2bucket.pth"), ("RIFE/flownet.pkl", SONIC, "RIFE/flownet.pkl"),
            ("yoloface_v5m.pt", SONIC, "yoloface_v5m.pt")] + COMMON
COMFYUI = [("unet.pth", SONIC, "Sonic/unet.pth"), ("audio2token.pth", SONIC, "Sonic/audio2token.pth"),
           ("audio2bucket.pth", SONIC, "Sonic/audio2bucket.pth"), ("RIFE/flownet.pkl", SONIC, "RIFE/flownet.pkl"),
           ("yoloface_v5m.pt", SONIC, "yoloface_v5m.pt")] + COMMON


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Path:
    return build_tiny_hub(tmp_path_factory.mktemp("hub"))


@pytest.fixture(scope="module")
def olah(hub, tmp_path_factory):
    with OlahHub(hub, tmp_path_factory.mktemp("olah")) as server:
        yield server


def run_sonic(endpoint: str | None, *args, home: Path, extra_env=None, timeout: float = 300):
    return subprocess.run([sys.executable, "-m", "sonic", *args], cwd=REPO_ROOT, env=sonic_env(endpoint, home, extra_env),
                          capture_output=True, text=True, timeout=timeout)


def sonic_env(endpoint: str | None, home: Path, extra_env=None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "SONIC_MODELS",
                        "HF_ENDPOINT", "XDG_CACHE_HOME")}
    env.update(PYTHONPATH=str(REPO_ROOT), HF_HOME=str(home / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1")
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    env.update(extra_env or {})
    return env


def assert_exactly(folder: Path, expected, hub: Path, repos: Path | None = None) -> None:
    """`folder` holds exactly the expected files, each byte-identical to the repository's."""
    found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert found == sorted(local for local, _, _ in expected)
    for local, repo, name in expected:
        assert (folder / local).read_bytes() == ((repos or hub / "models") / repo / name).read_bytes(), local


def resolved(requests, method: str = "GET") -> set[str]:
    """'repo/path' of every file request (`/ORG/NAME/resolve/REV/PATH`) with this method."""
    out = set()
    for m, path in requests:
        parts = path.strip("/").split("/")
        if m == method and len(parts) > 4 and parts[2] == "resolve":
            out.add("/".join(parts[:2]) + "/" + "/".join(parts[4:]))
    return out


def test_official_layout_fetches_exactly_the_needed_files_and_runs_doctor(olah, hub, tmp_path):
    mark = olah.mark()
    result = run_sonic(olah.url, "download", "--models", str(tmp_path / "checkpoints"), home=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert_exactly(tmp_path / "checkpoints", OFFICIAL, hub)
    requests = olah.requests(since=mark)
    assert resolved(requests) == {f"{repo}/{name}" for _, repo, name in OFFICIAL}
    assert not [p for _, p in requests if any(n in p for n in NEVER_FETCHED)]  # never asked, not even a HEAD
    licences = [line for line in result.stdout.splitlines() if "licence" in line]
    assert [line.split(":")[0] for line in licences] == [SONIC, SVD, WHISPER]  # each printed once
    assert "CC BY-NC-SA 4.0" in licences[0] and "Stability AI Community License" in licences[1]
    assert "all required weights load" in result.stdout  # doctor ran on the result


def test_comfyui_layout_then_a_rerun_fetches_nothing(olah, hub, tmp_path):
    models = tmp_path / "ComfyUI" / "models"
    result = run_sonic(olah.url, "download", "--models", str(models), "--layout", "comfyui", "--no-doctor",
                       home=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert_exactly(models / "sonic", COMFYUI, hub)
    assert not [p for _, p in olah.requests() if any(n in p for n in NEVER_FETCHED)]

    mark = olah.mark()
    again = run_sonic(olah.url, "download", "--models", str(models), "--no-doctor", home=tmp_path)  # layout on disk
    assert again.returncode == 0, again.stderr + again.stdout
    assert "nothing fetched" in again.stdout
    assert [p for _, p in olah.requests(since=mark) if "/resolve/" in p or "/tree/" in p] == []
    assert_exactly(models / "sonic", COMFYUI, hub)


def test_an_interrupted_download_resumes_where_it_stopped(hub, tmp_path):
    # huggingface_hub writes in 10 MB pieces: a 24 MB unet.pth leaves a partial file when stopped.
    served = tmp_path / "hub"
    shutil.copytree(hub / "models", served, ignore=shutil.ignore_patterns(".git"))
    big = served / SONIC / "Sonic" / "unet.pth"
    big.write_bytes(os.urandom(24 * 1024 ** 2))
    folder = tmp_path / "checkpoints"
    with HubServer(served, slow={f"{SONIC}/Sonic/unet.pth"}, chunk=256 * 1024, pause_s=0.1) as server:
        proc = subprocess.Popen([sys.executable, "-m", "sonic", "download", "--models", str(folder), "--no-doctor"],
                                cwd=REPO_ROOT, env=sonic_env(server.url, tmp_path), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        partial = []
        while not partial and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            partial = [p for p in folder.rglob("*.part") if p.stat().st_size > 0]
        assert partial, f"no partial file appeared: {proc.poll()} {server.requests}"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "run the same command again to resume" in err
        assert not (folder / "Sonic" / "unet.pth").exists()  # no half file in place
        stopped_at = max(p.stat().st_size for p in folder.rglob("*.part"))
        first_gets = server.file_requests()

        server.slow.clear()
        result = run_sonic(server.url, "download", "--models", str(folder), "--no-doctor", home=tmp_path)
        assert result.returncode == 0, result.stderr + result.stdout
        again = server.file_requests()[len(first_gets):]
    assert (folder / "Sonic" / "unet.pth").read_bytes() == big.read_bytes()
    assert_exactly(folder, OFFICIAL, served.parent, repos=served)
    # Only the interrupted file was asked for again, from where it stopped.
    assert again == [(f"/{SONIC}/resolve/main/Sonic/unet.pth", f"bytes={stopped_at}-", 206)]
    assert 0 < stopped_at < big.stat().st_size


@pytest.mark.parametrize("token", [None, "hf_not_a_real_token"])
def test_gated_repository_says_what_to_do_before_fetching(hub, tmp_path, token):
    with HubServer(hub / "models", gated={SVD}) as server:
        result = run_sonic(server.url, "download", "--models", str(tmp_path / "w"), home=tmp_path,
                           extra_env={"HF_TOKEN": token} if token else None)
        gets = server.file_requests("GET")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {SVD} is gated"), result.stderr
    for advice in (f"https://huggingface.co/{SVD}", "accept its licence", "hf auth login", "HF_TOKEN"):
        assert advice in lines[0]
    assert ("a token was sent" if token else "no Hugging Face token was found") in lines[0]
    assert gets == []  # stopped before any file was fetched


def test_only_a_subset_and_an_unknown_group(hub, tmp_path):
    with HubServer(hub / "models") as server:
        result = run_sonic(server.url, "download", "--models", str(tmp_path / "w"), "--only", "whisper",
                           home=tmp_path)
        bad = run_sonic(server.url, "download", "--models", str(tmp_path / "w"), "--only", "whisper,unet",
                        home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_exactly(tmp_path / "w", [e for e in OFFICIAL if e[1] == WHISPER], hub)
    assert "MISSING" in result.stdout  # the doctor still tells what the rest of the folder lacks
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown: unet" in bad.stderr


def test_offline_mode_is_refused_in_one_line(tmp_path):
    result = run_sonic("http://127.0.0.1:9", "download", "--models", str(tmp_path / "w"), home=tmp_path,
                       extra_env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set"), result.stderr
    assert not (tmp_path / "w").exists()


def test_generate_without_models_uses_the_default_folder_and_names_the_download(tmp_path):
    image = REPO_ROOT / "workflows" / "example_portrait.jpg"
    audio = REPO_ROOT / "workflows" / "example_speech.wav"
    args = ("generate", "--image", str(image), "--audio", str(audio), "--out", str(tmp_path / "o.mp4"))
    chosen = run_sonic(None, *args, home=tmp_path, extra_env={"SONIC_MODELS": str(tmp_path / "mine")})
    assert chosen.returncode == 2
    assert f"Searched: {tmp_path / 'mine'}," in chosen.stderr and "`python -m sonic download`" in chosen.stderr
    default = run_sonic(None, *args, home=tmp_path, extra_env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert default.returncode == 2
    assert f"Searched: {tmp_path / 'cache' / 'sonic' / 'models'}," in default.stderr
    assert "`python -m sonic download`" in default.stderr
    given = run_sonic(None, *args, "--models", str(tmp_path / "ComfyUI" / "models" / "sonic"), home=tmp_path)
    assert given.returncode == 2
    assert f"`python -m sonic download --models {tmp_path / 'ComfyUI' / 'models' / 'sonic'} --layout comfyui`" \
        in given.stderr
