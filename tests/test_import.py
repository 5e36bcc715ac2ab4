"""Importing the library or the pack is cheap and has no side effects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import os, sys
before = set(os.listdir('.'))
{imports}
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers', 'cv2', 'librosa'))
assert not heavy, heavy
assert set(os.listdir('.')) == before, set(os.listdir('.')) ^ before
print('ok')
"""


def run_probe(imports: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO.parent) + os.pathsep + str(REPO))
    return subprocess.run([sys.executable, "-c", PROBE.format(imports=imports)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=env)


def test_import_sonic_is_cheap_and_side_effect_free(tmp_path):
    result = run_probe("import sonic\nfrom sonic import SonicConfig, SonicError\nimport sonic.cli", tmp_path)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_pack_folder_imports_without_comfyui(tmp_path):
    """Outside ComfyUI (no `folder_paths`), the pack's __init__ imports nothing heavy and maps no nodes."""
    code = (f"import importlib.util\n"
            f"spec = importlib.util.spec_from_file_location('sonic_pack', {str(REPO / '__init__.py')!r}, "
            f"submodule_search_locations=[{str(REPO)!r}])\n"
            f"pack = importlib.util.module_from_spec(spec); sys.modules['sonic_pack'] = pack\n"
            f"spec.loader.exec_module(pack)\n"
            f"assert pack.NODE_CLASS_MAPPINGS == {{}}")
    result = run_probe(code, tmp_path)
    assert result.returncode == 0, result.stderr


def test_only_sonic_is_a_top_level_package():
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert config["tool"]["setuptools"]["packages"]["find"]["include"] == ["sonic", "sonic.*"]
    assert "tool" in config and "comfy" in config["tool"]
