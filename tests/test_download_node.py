"""Sonic Model Loader's `download_missing` option, inside ComfyUI's real `folder_paths`.

The pack is imported the way ComfyUI 0.3.75 imports it (as in test_pack_import.py), in a fresh
interpreter whose base directory has no weights; the loader then runs against the small local
hub of tests/hub_server.py (HF_ENDPOINT), once with the option off and once with it on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from comfyui_server import comfyui_paths
from hub_server import HubServer
from tiny_hub import NEVER_FETCHED, build_tiny_hub

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import importlib.util, json, os, sys

comfy_dir, pack_dir, download = sys.argv[1], sys.argv[2], sys.argv[3] == "on"
base = os.getcwd()
sys.path.insert(0, comfy_dir)
import comfy.options
comfy.options.enable_args_parsing()
sys.argv = ["main.py", "--cpu", "--base-directory", base]
import torch
import folder_paths

name = pack_dir.replace(".", "_x_")
spec = importlib.util.spec_from_file_location(name, os.path.join(pack_dir, "__init__.py"))
pack = importlib.util.module_from_spec(spec)
sys.modules[name] = pack
spec.loader.exec_module(pack)
loader = pack.NODE_CLASS_MAPPINGS["SonicModelLoader"]
report = {"option": loader.INPUT_TYPES().get("optional", {}).get("download_missing")}
try:
    (model,) = loader().load("auto", "fp32", "offload", "opencv", **({"download_missing": True} if download else {}))
    report["loaded"] = repr(model)
except Exception as exc:
    report["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Path:
    return build_tiny_hub(tmp_path_factory.mktemp("hub"))


def run_loader(base: Path, endpoint: str, download: bool) -> dict:
    comfy_dir, _old = comfyui_paths()
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(PYTHONPATH=str(REPO), HF_ENDPOINT=endpoint, HF_HOME=str(base / "hf-home"),
               HF_HUB_DISABLE_PROGRESS_BARS="1")
    result = subprocess.run([sys.executable, "-c", PROBE, str(comfy_dir), str(REPO), "on" if download else "off"],
                            cwd=base, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_loader_names_the_download_and_fetches_only_when_asked(hub, tmp_path):
    (tmp_path / "models" / "sonic").mkdir(parents=True)
    with HubServer(hub / "models") as server:
        off = run_loader(tmp_path, server.url, download=False)
        assert server.requests == []  # off by default: nothing is fetched
        on = run_loader(tmp_path, server.url, download=True)
        asked = [path for _, path, _, _ in server.requests]

    kind, options = off["option"]
    assert kind == "BOOLEAN" and options["default"] is False
    assert off["error"].startswith("WeightsError: ")
    assert "unet.pth" in off["error"] and "set download_missing to true in Sonic Model Loader" in off["error"]
    assert f"python -m sonic download --models {tmp_path / 'models' / 'sonic'} --layout comfyui" in off["error"]

    assert "loaded" in on, on
    sonic = tmp_path / "models" / "sonic"
    for name in ("unet.pth", "audio2token.pth", "RIFE/flownet.pkl", "whisper-tiny/model.safetensors",
                 "stable-video-diffusion-img2vid-xt/vae/diffusion_pytorch_model.safetensors"):
        assert (sonic / name).is_file(), name
    assert not [p for p in asked if any(n in p for n in NEVER_FETCHED)]
    assert not (sonic / ".sonic-download").exists()
