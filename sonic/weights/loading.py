"""Build every network from its config and load its weights strictly (CPU, fp32).

Networks are built on the meta device and the checkpoint tensors are assigned, so no time
or memory goes into a random initialisation that would be overwritten. The pipeline moves
and casts them afterwards according to its device, dtype and memory policy.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import WeightsError
from . import BUILTIN_SVD_CONFIGS, HINTS, ModelFiles, find_model_files, load_strict, read_state_dict


def read_json(path: Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{what} config {path} cannot be read ({exc}); download it again") from None


@contextlib.contextmanager
def parameters_on_meta():
    """Create module parameters on the meta device (no memory, no random init) while buffers
    stay real: buffers that are not in checkpoints (e.g. CLIP's `position_ids`) keep their values."""
    original = torch.nn.Module.register_parameter

    def register(module, name, param):
        if param is not None and not param.is_meta:
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    torch.nn.Module.register_parameter = register
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original


@dataclass
class SonicModels:
    """The loaded networks. Optional ones are None when the run does not need them."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    image_encoder: torch.nn.Module
    whisper: torch.nn.Module
    audio2token: torch.nn.Module
    audio2bucket: torch.nn.Module
    scheduler_config: dict
    rife: torch.nn.Module | None = None
    face_detector: Any | None = None


def load_models(models_dir, *, svd_checkpoint=None, need_face_detector: bool = False,
                load_face_detector: bool = True, need_interpolation: bool = True):
    """Every model the pipeline needs, as a `SonicModels` (weights checked strictly)."""
    files = find_model_files(models_dir, need_face_detector=need_face_detector,
                             need_interpolation=need_interpolation, svd_checkpoint=svd_checkpoint)
    whisper, whisper_width = load_whisper(files)
    vae, image_encoder = load_svd_parts(files)
    return SonicModels(
        unet=load_unet(files),
        vae=vae,
        image_encoder=image_encoder,
        whisper=whisper,
        audio2token=load_audio2token(files),
        audio2bucket=load_audio2bucket(files, whisper_width),
        scheduler_config=read_json(files.scheduler_config, "scheduler"),
        rife=load_rife(files) if files.rife is not None else None,
        face_detector=load_yoloface(files) if load_face_detector and files.face_detector is not None else None,
    )


def load_unet(files: ModelFiles):
    from ..models.unet import build_sonic_unet

    config = read_json(files.unet_config, "UNet")
    state = read_state_dict(files.unet, what="unet")
    with torch.device("meta"):
        unet = build_sonic_unet(config)
    return load_strict(unet, state, path=files.unet, what="Sonic UNet", hints=HINTS["unet"]).float()


def load_audio2token(files: ModelFiles):
    from ..models.audio_adapters import AudioToTokens

    state = read_state_dict(files.audio2token, what="audio2token")
    _require_keys(state, ("proj1.weight", "proj3.weight", "norm.weight"), files.audio2token, "audio2token")
    model = AudioToTokens.from_state_dict_shapes(state, device="meta")
    return load_strict(model, state, path=files.audio2token, what="audio2token", hints=HINTS["audio2token"]).float()


def load_audio2bucket(files: ModelFiles, whisper_width: int):
    from ..models.audio_adapters import AudioToBucket

    state = read_state_dict(files.audio2bucket, what="audio2bucket")
    _require_keys(state, ("proj1.weight", "proj3.weight"), files.audio2bucket, "audio2bucket")
    model = AudioToBucket.from_state_dict_shapes(state, whisper_width=whisper_width, device="meta")
    return load_strict(model, state, path=files.audio2bucket, what="audio2bucket",
                       hints=HINTS["audio2bucket"]).float()


def load_whisper(files: ModelFiles):
    """The Whisper encoder only (the decoder in the checkpoint is never used) and its width."""
    from ..models.whisper import build_whisper_encoder, encoder_state_dict

    config = read_json(files.whisper_config, "Whisper")
    state = encoder_state_dict(read_state_dict(files.whisper_weights, what="whisper"))
    encoder = build_whisper_encoder(config, device="meta")
    encoder = load_strict(encoder, state, path=files.whisper_weights, what="Whisper encoder",
                          hints=HINTS["whisper"]).float()
    return encoder, int(config["d_model"])


def load_svd_parts(files: ModelFiles):
    """The SVD-xt VAE and CLIP image encoder, from the diffusers folder or the single file."""
    from ..models.image_models import build_clip_image_encoder, build_vae

    vae_config = read_json(files.vae_config, "VAE")
    clip_config = read_json(files.image_encoder_config, "CLIP image encoder")
    if files.svd_checkpoint is not None:
        vae_state, clip_state, vae_config, clip_config = _read_svd_single_file(files, vae_config, clip_config)
        vae_path = clip_path = files.svd_checkpoint
    else:
        vae_state = read_state_dict(files.vae_weights, what="vae")
        clip_state = read_state_dict(files.image_encoder_weights, what="image_encoder")
        vae_path, clip_path = files.vae_weights, files.image_encoder_weights
    with parameters_on_meta():
        vae = build_vae(vae_config)
        image_encoder = build_clip_image_encoder(clip_config)
    vae = load_strict(vae, vae_state, path=vae_path, what="SVD VAE", hints=HINTS["vae"]).float()
    image_encoder = load_strict(image_encoder, clip_state, path=clip_path, what="CLIP image encoder",
                                hints=HINTS["image_encoder"]).float()
    return vae, image_encoder


def _read_svd_single_file(files: ModelFiles, vae_reference: dict, clip_reference: dict):
    """(vae_state, clip_state, vae_config, clip_config) of a single-file SVD checkpoint.

    The configs follow the file's tensor shapes (a reduced test-size file loads too); the
    reference configs (an SVD folder's, else the built-in SVD-xt ones) supply what shapes do not
    tell, and a full-size file must agree with them (`single_file_configs`).
    """
    from safetensors import safe_open

    from .svd_single_file import split_svd_single_file
    from .svd_single_file_config import single_file_configs

    try:
        handle = safe_open(str(files.svd_checkpoint), framework="pt")
    except Exception as exc:  # safetensors raises its own error types for damaged headers
        raise WeightsError(f"{files.svd_checkpoint} is not a readable .safetensors SVD checkpoint "
                           f"({' '.join(str(exc).split())[:120]}); use svd_xt.safetensors or svd_xt_1_1.safetensors "
                           f"from stabilityai, downloaded again if it is damaged") from None
    with handle:
        vae_state, clip_state = split_svd_single_file(_LazyTensors(handle))
    vae_config, clip_config = single_file_configs(
        vae_state, clip_state, vae_reference=vae_reference, clip_reference=clip_reference,
        vae_reference_is_builtin=_is_builtin(files.vae_config),
        clip_reference_is_builtin=_is_builtin(files.image_encoder_config))
    return vae_state, clip_state, vae_config, clip_config


def _is_builtin(config_path: Path) -> bool:
    return config_path.resolve().is_relative_to(BUILTIN_SVD_CONFIGS.resolve())


def load_rife(files: ModelFiles):
    from ..models.rife import build_rife

    return build_rife(read_state_dict(files.rife, what="rife"))


def load_yoloface(files: ModelFiles):
    from ..inputs.face_detectors import YoloFaceDetector

    return YoloFaceDetector.from_file(files.face_detector)  # tensors only: the file's program never runs


def _require_keys(state, keys, path, what) -> None:
    """Before building a model from a file's shapes: the file must be that model, not another."""
    from . import RELEASE_NAMES, identify_weights, shapes_of

    role = identify_weights(shapes_of(state))
    if role is not None and role != what:
        raise WeightsError(f"{path} holds {RELEASE_NAMES.get(role, role)}, not {RELEASE_NAMES.get(what, what)}: the "
                           f"files were probably swapped or renamed; put each file in its own place")
    missing = [k for k in keys if k not in state]
    if missing:
        raise WeightsError(f"{path} is not {RELEASE_NAMES.get(what, what)}: it lacks {', '.join(missing)} "
                           f"(it has {len(state)} keys, e.g. {', '.join(sorted(state)[:4])}); download it again")


class _LazyTensors:
    """A read-only mapping over a safetensors file that loads a tensor when it is asked for."""

    def __init__(self, handle):
        self._handle = handle
        self._keys = list(handle.keys())

    def keys(self):
        return list(self._keys)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)

    def __contains__(self, key):
        return key in self._keys

    def __getitem__(self, key):
        return self._handle.get_tensor(key)

    def items(self):
        return ((k, self[k]) for k in self._keys)


def doctor_report(models_dir, *, svd_checkpoint=None) -> tuple[bool, list[str]]:
    """Check a weights folder file by file; returns (all good, lines to print)."""
    lines: list[str] = []
    try:
        files = find_model_files(models_dir, need_face_detector=False, need_interpolation=False,
                                 svd_checkpoint=svd_checkpoint)
    except WeightsError as exc:
        return False, [f"MISSING: {exc}"]
    lines.append(f"layout: {files.layout} ({files.root})")
    def whisper_width() -> int:
        return int(read_json(files.whisper_config, "Whisper")["d_model"])

    checks = [("Sonic UNet", lambda: load_unet(files), files.unet),
              ("audio2token", lambda: load_audio2token(files), files.audio2token),
              ("audio2bucket", lambda: load_audio2bucket(files, whisper_width()), files.audio2bucket),
              ("Whisper encoder", lambda: load_whisper(files), files.whisper_weights),
              ("SVD VAE + CLIP image encoder", lambda: load_svd_parts(files),
               files.svd_checkpoint or files.vae_weights)]
    optional = [("RIFE interpolation", load_rife, files.rife,
                 "optional RIFE/flownet.pkl not found: videos will be 12.5 fps (use --no-interpolate) until you add "
                 "it from HF LeonJoe13/Sonic"),
                ("face detector", load_yoloface, files.face_detector,
                 "optional yoloface_v5m.pt not found: faces are found with OpenCV's Haar cascade instead")]
    for name, loader, path, absent in optional:
        if path is None:
            lines.append(absent)
        else:
            checks.append((name, lambda loader=loader: loader(files), path))
    ok = True
    for name, check, path in checks:
        try:
            check()
            lines.append(f"ok       {name}: {path}")
        except WeightsError as exc:
            ok = False
            lines.append(f"BROKEN   {name}: {exc}")
    lines.append("all required weights load" if ok else "some weights are broken: fix the lines marked BROKEN")
    return ok, lines
