"""Importing the pack folder the way ComfyUI 0.3.75 does, with ComfyUI's real `folder_paths`.

ComfyUI's `load_custom_node` builds a spec from `<pack>/__init__.py` named after the folder
path and executes it; the pack must then register its 8 nodes and `models/sonic` without
importing diffusers/transformers/OpenCV/librosa, creating folders or touching a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from comfyui_server import comfyui_paths

REPO = Path(__file__).resolve().parents[1]

NODES = {
    "SonicModelLoader", "SonicAudioLoader", "SonicImageLoader", "SONIC_PreData",
    "SonicInference", "SonicLatentDecoder", "SonicPostProcess", "SonicVideoOutput",
}
HEAVY = ("diffusers", "transformers", "cv2", "librosa")

# Runs in a fresh interpreter, cwd = an empty temp dir, argv[1] = ComfyUI, argv[2] = the pack.
PROBE = r"""
import importlib.util, json, os, sys

comfy_dir, pack_dir, base = sys.argv[1], sys.argv[2], os.getcwd()
sys.path.insert(0, comfy_dir)  # as main.py: ComfyUI's own modules come first
import comfy.options
comfy.options.enable_args_parsing()
sys.argv = ["main.py", "--cpu", "--base-directory", base]
import torch  # ComfyUI has it loaded before any custom node
import folder_paths

def tree():
    return sorted(os.path.relpath(os.path.join(d, n), base) for d, dirs, files in os.walk(base) for n in dirs + files)

before = tree()  # folder_paths itself creates input/ on import
name = pack_dir.replace(".", "_x_")  # ComfyUI's module name for a folder
spec = importlib.util.spec_from_file_location(name, os.path.join(pack_dir, "__init__.py"))
pack = importlib.util.module_from_spec(spec)
sys.modules[name] = pack
spec.loader.exec_module(pack)
print(json.dumps({
    "nodes": sorted(pack.NODE_CLASS_MAPPINGS),
    "display": {k: v for k, v in pack.NODE_DISPLAY_NAME_MAPPINGS.items()},
    "classes_ok": all(isinstance(c, type) and hasattr(c, "INPUT_TYPES") and hasattr(c, "FUNCTION")
                      for c in pack.NODE_CLASS_MAPPINGS.values()),
    "modules": sorted({m.split(".")[0] for m in sys.modules}),
    "cuda_initialized": torch.cuda.is_initialized(),
    "created": sorted(set(tree()) - set(before)),
    "sonic_folder": list(folder_paths.folder_names_and_paths.get("sonic", ([], []))[0]),
    "sonic_extensions": sorted(folder_paths.folder_names_and_paths.get("sonic", ([], []))[1]),
    "models_dir": folder_paths.models_dir,
}))
"""


def import_pack_in_comfyui(cwd: Path) -> dict:
    comfy_dir, _old = comfyui_paths()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only what ComfyUI itself would see
    result = subprocess.run([sys.executable, "-c", PROBE, str(comfy_dir), str(REPO)], cwd=cwd, capture_output=True,
                            text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_pack_registers_every_node_cheaply_inside_comfyui(tmp_path):
    report = import_pack_in_comfyui(tmp_path)
    assert set(report["nodes"]) == NODES
    assert set(report["display"]) == NODES and all(name.startswith("Sonic") for name in report["display"].values())
    assert report["classes_ok"]
    heavy = [m for m in HEAVY if m in report["modules"]]
    assert not heavy, f"the pack imported {heavy} at load time; import them inside the nodes"
    assert not report["cuda_initialized"]
    assert report["created"] == [], f"importing the pack created {report['created']}"
    # models/sonic is registered in the base directory ComfyUI was started with, with the weight extensions.
    assert report["sonic_folder"] == [os.path.join(report["models_dir"], "sonic")]
    assert report["models_dir"] == str(tmp_path / "models")
    assert {".safetensors", ".pth", ".pt", ".pkl", ".json"} <= set(report["sonic_extensions"])
