"""Model files: find them, read them safely, check them strictly, convert pickles to safetensors.

* `find_model_files(models_dir)` -> `ModelFiles` (paths only; one error lists everything missing)
* `read_state_dict(path, what=...)` -> `{key: tensor}` (never runs code from a file)
* `check_state_dict(...)` / `load_strict(module, ...)` with diagnosis `HINTS[role]`
* `convert_checkpoints(models_dir)` -> verified `.safetensors` twins
* `read_torchscript_tensors(path, what)`: the tensors of a TorchScript archive (YOLOv5-face), its program never run
"""

from __future__ import annotations

import importlib

# Imported on first use (PEP 562): `sonic.weights.locate` is read by the CLI's help texts, which
# must not pay for importing torch (checking/convert/reading need it).
_WHERE = {
    "checking": ("HINTS", "RELEASE_NAMES", "check_state_dict", "hint_audio2bucket_as_audio2token",
                 "hint_audio2token_as_audio2bucket", "hint_rife_prefix", "hint_stock_svd_unet", "hint_wrong_model",
                 "identify_weights", "load_strict", "shapes_of"),
    "convert": ("convert_checkpoints", "convert_file", "safetensors_digests", "state_dict_digests", "tensor_digest"),
    "locate": ("BUILTIN_SVD_CONFIGS", "SONIC_REPO", "SVD_REPO", "WHISPER_REPO", "ModelFiles", "find_model_files"),
    "reading": ("read_safetensors_metadata", "read_state_dict", "unsafe_pickle_globals"),
    "torchscript": ("read_torchscript_tensors",),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}
_MODULE_OF["rife_state_dict"] = "..models.rife"

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module if module.startswith(".") else f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
