"""Model files: find them, read them safely, check them strictly, convert pickles to safetensors.

* `find_model_files(models_dir)` -> `ModelFiles` (paths only; one error lists everything missing)
* `read_state_dict(path, what=...)` -> `{key: tensor}` (never runs code from a file)
* `check_state_dict(...)` / `load_strict(module, ...)` with diagnosis `HINTS[role]`
* `convert_checkpoints(models_dir)` -> verified `.safetensors` twins
* `read_torchscript_tensors(path, what)`: the tensors of a TorchScript archive (YOLOv5-face), its program never run
"""

from __future__ import annotations

from .checking import (HINTS, RELEASE_NAMES, check_state_dict, hint_audio2bucket_as_audio2token,
                       hint_audio2token_as_audio2bucket, hint_rife_prefix, hint_stock_svd_unet, hint_wrong_model,
                       identify_weights, load_strict, shapes_of)
from ..models.rife import rife_state_dict
from .convert import convert_checkpoints, convert_file, safetensors_digests, state_dict_digests, tensor_digest
from .locate import (BUILTIN_SVD_CONFIGS, SONIC_REPO, SVD_REPO, WHISPER_REPO, ModelFiles, find_model_files)
from .reading import read_safetensors_metadata, read_state_dict, unsafe_pickle_globals
from .torchscript import read_torchscript_tensors

__all__ = [
    "ModelFiles", "find_model_files", "BUILTIN_SVD_CONFIGS", "SONIC_REPO", "SVD_REPO", "WHISPER_REPO",
    "read_state_dict", "read_safetensors_metadata", "unsafe_pickle_globals", "read_torchscript_tensors",
    "check_state_dict", "load_strict", "shapes_of", "identify_weights", "rife_state_dict", "HINTS", "RELEASE_NAMES",
    "hint_stock_svd_unet", "hint_audio2bucket_as_audio2token", "hint_audio2token_as_audio2bucket",
    "hint_rife_prefix", "hint_wrong_model",
    "convert_checkpoints", "convert_file", "tensor_digest", "state_dict_digests", "safetensors_digests",
]
