"""The install path ComfyUI-Manager and the registry take: files copied into custom_nodes, then
`pip install -r requirements.txt` into ComfyUI's Python; no `pip install -e`."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from comfyui_server import (REPO, ComfyServer, apply_test_settings, fast_overrides, final_message, make_base_directory,
                            run_prompt, write_test_media)

pytest_plugins = ["comfyui_server"]

# Left out of requirements.txt on purpose: ComfyUI brings its own build.
PROVIDED_BY_COMFYUI = {"torch"}
NODE_COUNT = 8


def requirement_set(lines) -> dict[str, str]:
    from packaging.requirements import Requirement

    found = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            found[requirement.name.lower()] = str(requirement.specifier)
    return found


def test_requirements_txt_matches_pyproject_dependencies():
    declared = requirement_set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    shipped = requirement_set((REPO / "requirements.txt").read_text().splitlines())
    expected = {name: spec for name, spec in declared.items() if name not in PROVIDED_BY_COMFYUI}
    assert shipped == expected, "requirements.txt and pyproject.toml [project].dependencies disagree"
    assert PROVIDED_BY_COMFYUI <= set(declared), "a dependency ComfyUI provides is no longer declared"


def pack_files() -> list[str]:
    """What a clone of the repository holds: tracked files plus new ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return [name for name in listed if name and (REPO / name).is_file()]


def copy_pack(dest: Path) -> Path:
    import shutil

    for name in pack_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    return dest


# Runs ComfyUI's main.py with setuptools' editable-install finder removed, so `sonic` can only come from
# the pack folder itself, as on a machine where the pack was never `pip install -e`d.
NO_EDITABLE = ("import runpy, sys; "
               "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
               "sys.argv[0] = 'main.py'; runpy.run_path('main.py', run_name='__main__')")


@pytest.mark.comfyui
def test_pack_installed_the_manager_way_runs_with_weights_from_extra_model_paths(tmp_path, comfy_paths):
    """Copy into custom_nodes, requirements already satisfied, every node registered, and the fast preset runs
    on weights found through extra_model_paths.yaml (keys `sonic` and `checkpoints`): all without
    `pip install -e` (its finder is removed from the server, so `sonic` can only come from the pack)."""
    import json
    import os

    from sonic.tools.comfy_client import ComfyClient
    from sonic.tools.zoo import write_tiny_zoo

    base = tmp_path / "ComfyUI"
    pack = copy_pack(base / "custom_nodes" / "comfyui-sonic")
    # Would pip change ComfyUI's environment? It must not (and must not touch torch): a dry run says.
    dry = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-input", "-r",
                          str(pack / "requirements.txt")], capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "Would install" not in dry.stdout, f"requirements.txt would change the environment:\n{dry.stdout}"
    make_base_directory(base, with_models=False)  # the folders; the pack is already there, so no link
    write_test_media(base / "input")
    models = write_tiny_zoo(tmp_path / "shared", layout="comfyui", svd_single_file=True)  # shared/models
    config = tmp_path / "extra_model_paths.yaml"
    config.write_text(f"shared:\n  base_path: {models}\n  sonic: sonic\n  checkpoints: checkpoints\n")
    assert not (base / "models" / "sonic").exists(), "the weights must come from the extra path only"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    server = ComfyServer(comfy_paths[0], base, launch=("-c", NO_EDITABLE), env=env,
                         extra_args=("--extra-model-paths-config", str(config)))
    try:
        server.wait_ready()
        info = ComfyClient(server.url).object_info()
        ours = sorted(n for n, d in info.items() if d.get("python_module", "").endswith("comfyui-sonic"))
        assert len(ours) == NODE_COUNT, f"{ours}\n{server.log()}"
        prompt = apply_test_settings(json.loads((pack / "workflows" / "api" / "sonic_fast.json").read_text()),
                                     {**fast_overrides(), "image": "portrait.png", "audio": "speech.wav"})
        _, messages = run_prompt(server, prompt)
        assert final_message(messages)["type"] == "execution_success", f"{final_message(messages)}\n{server.log()}"
        log = server.log(200000)
    finally:
        server.stop()
    ours = [line for line in log.splitlines() if str(pack) in line]
    assert ours, f"the server did not load the copied pack:\n{log}"
    assert not [line for line in ours if "IMPORT FAILED" in line or "Cannot import" in line], log
