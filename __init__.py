"""ComfyUI entry point of the Sonic node pack (V1 node API: loads on 2024 and current cores).

Importing this file has no side effects beyond making the pack's `sonic` library importable
and registering the `models/sonic` folder with ComfyUI: no device choice, no downloads, no
model loading. Heavy work happens inside the nodes.

Outside ComfyUI (pytest imports the repository root as a package, since this file exists)
there is no `folder_paths` module; the mappings are then empty and nothing else is imported.
"""

import importlib.util
import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
# Appended (not prepended) so ComfyUI's own top-level modules (`nodes`, `utils`, ...) always win.
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)

if importlib.util.find_spec("folder_paths") is not None:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:  # not running inside ComfyUI
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

# Frontend extensions (web/js/*.js, served at /extensions/<pack folder>/): see web/js/sonic_audio.js.
WEB_DIRECTORY = "./web/js"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
