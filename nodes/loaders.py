"""Loader nodes: the Sonic model bundle, an audio file and a portrait image."""

from __future__ import annotations

import os
import re
from pathlib import Path

import folder_paths

from sonic.placement import MEMORY_POLICIES, describe_policies

from .common import CATEGORY, SONIC_MODEL, comfy_errors, model_management, register_model_folder
from .paths import (AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, UnsafePathError, file_fingerprint, list_input_files,
                    resolve_media_path)

SVD_FOLDER_NAME = "stable-video-diffusion-img2vid-xt"
SVD_FOLDER_VAE_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
UNET_MARKERS = ("unet.pth", "unet.safetensors", "Sonic/unet.pth", "Sonic/unet.safetensors")
FACE_DETECTOR_FILES = ("yoloface_v5m.pt", "Sonic/yoloface_v5m.pt")
DTYPES = ["auto", "fp16", "bf16", "fp32"]
AUTO = "auto"


# ------------------------------------------------------------------------------ model folders
def sonic_model_dirs() -> list[Path]:
    """Every folder registered under the `sonic` key (models/sonic plus extra_model_paths.yaml ones)."""
    register_model_folder()
    return [Path(p) for p in folder_paths.get_folder_paths("sonic")]


def find_models_dir() -> Path:
    """The first registered folder that holds Sonic's unet weights (either layout), else the default one."""
    dirs = sonic_model_dirs()
    for folder in dirs:
        if any((folder / marker).is_file() for marker in UNET_MARKERS):
            return folder
    return dirs[0]


def svd_checkpoint_choices() -> list[str]:
    """Single-file SVD checkpoints offered by the loader (safetensors in models/checkpoints)."""
    names = folder_paths.get_filename_list("checkpoints")
    return [n for n in names if n.lower().endswith((".safetensors", ".sft"))]


def auto_svd_checkpoint(models_dir: Path) -> str | None:
    """None when a diffusers SVD folder with weights sits in models/sonic (a folder of configs only does
    not count); else the best svd_xt file in checkpoints."""
    vae = models_dir / SVD_FOLDER_NAME / "vae"
    if any((vae / name).is_file() for name in SVD_FOLDER_VAE_WEIGHTS):  # a diffusers folder with weights
        return None
    names = svd_checkpoint_choices()
    ranked = sorted((n for n in names if "svd" in os.path.basename(n).lower()),
                    key=lambda n: (not re.search(r"svd_xt_1_1", n.lower()), not re.search(r"svd_xt", n.lower()), n))
    return folder_paths.get_full_path("checkpoints", ranked[0]) if ranked else None


class SonicModelLoader:
    """Loads Sonic's networks (UNet, VAE, CLIP, Whisper, audio adapters, RIFE, face detector)."""

    DESCRIPTION = ("Loads the Sonic weights from ComfyUI/models/sonic (official or ComfyUI layout). The SVD-xt part "
                   "comes from a diffusers folder inside models/sonic or from a single svd_xt file in models/checkpoints.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (SONIC_MODEL,)
    RETURN_NAMES = ("sonic_model",)
    OUTPUT_TOOLTIPS = ("The loaded Sonic pipeline; connect it to Sonic Prepare, Inference, Decode and PostProcess.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "svd_model": ([AUTO] + svd_checkpoint_choices(), {
                "default": AUTO,
                "tooltip": "Where the SVD-xt VAE and image encoder come from. auto: the diffusers folder "
                           f"models/sonic/{SVD_FOLDER_NAME} if present, else svd_xt_1_1/svd_xt in models/checkpoints."}),
            "dtype": (DTYPES, {
                "default": AUTO,
                "tooltip": "Precision of the UNet, VAE and CLIP. auto: bf16 on GPUs that support it, fp16 on older "
                           "GPUs, fp32 on the CPU. fp16 is refused on the CPU."}),
            "memory_policy": (list(MEMORY_POLICIES), {
                "default": "keep",
                "tooltip": describe_policies()}),
            "face_detector": ([AUTO, "yoloface", "opencv"], {
                "default": AUTO, "advanced": True,
                "tooltip": "auto: yoloface_v5m.pt when it is in models/sonic, else OpenCV's built-in detector. "
                           "yoloface: require the release detector. opencv: never load yoloface."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, svd_model, dtype, memory_policy, face_detector):
        if svd_model != AUTO and folder_paths.get_full_path("checkpoints", svd_model) is None:
            return f"svd_model {svd_model!r} is not in models/checkpoints; choose 'auto' or refresh the list"
        if dtype not in DTYPES:
            return f"dtype must be one of {DTYPES}, got {dtype!r}"
        if memory_policy not in MEMORY_POLICIES:
            return f"memory_policy must be one of {MEMORY_POLICIES}, got {memory_policy!r}"
        if face_detector not in (AUTO, "yoloface", "opencv"):
            return f"face_detector must be auto, yoloface or opencv, got {face_detector!r}"
        if dtype == "fp16" and model_management().get_torch_device().type == "cpu":
            return "dtype fp16 is extremely slow on the CPU and not supported; choose auto, fp32 or bf16"
        return True

    def load(self, svd_model, dtype, memory_policy, face_detector):
        from sonic.errors import WeightsError
        from sonic.weights.locate import find_model_files

        models_dir = find_models_dir()
        if not models_dir.is_dir():
            searched = ", ".join(str(p) for p in sonic_model_dirs())
            raise WeightsError(f"no Sonic model folder found (searched: {searched}); create {models_dir} and put "
                               f"unet.pth, audio2token.pth, audio2bucket.pth, whisper-tiny/ ... there (see the README)")
        svd = auto_svd_checkpoint(models_dir) if svd_model == AUTO else folder_paths.get_full_path("checkpoints", svd_model)
        use_yolo = face_detector == "yoloface" or (
            face_detector == AUTO and any((models_dir / f).is_file() for f in FACE_DETECTOR_FILES))
        # Only names and sizes are checked here (one error listing every missing file); the weights
        # load when a node first needs them, after Sonic Prepare has checked its cheap inputs.
        find_model_files(models_dir, need_face_detector=use_yolo, need_interpolation=True, svd_checkpoint=svd)
        device = model_management().get_torch_device()
        return (LazySonicPipeline(models_dir, device=device, dtype=dtype, memory_policy=memory_policy,
                                  svd_checkpoint=svd, face_detector=use_yolo),)


class LazySonicPipeline:
    """The SONIC_MODEL value: a `SonicPipeline` that is built on first use, then kept.

    ComfyUI caches the loader's output, so later prompts reuse the built pipeline. `device` and
    `memory_policy` are known without loading (make_room/release_memory read them); every
    other attribute is the pipeline's.
    """

    def __init__(self, models_dir: Path, *, device, dtype: str, memory_policy: str, svd_checkpoint,
                 face_detector: bool):
        self.models_dir = models_dir
        self.device = device
        self.dtype = dtype
        self.memory_policy = memory_policy
        self.svd_checkpoint = svd_checkpoint
        self.use_face_detector = face_detector
        self._pipeline = None

    @property
    def loaded(self) -> bool:
        return self._pipeline is not None

    def pipeline(self):
        """The `SonicPipeline`, loading every weight the first time."""
        if self._pipeline is None:
            self._pipeline = self._build()
        return self._pipeline

    def _build(self):
        from sonic.pipeline import SonicPipeline

        mm = model_management()
        if self.memory_policy == "lowvram" and self.device.type != "cpu":
            mm.unload_all_models()
        with comfy_errors(None, knobs="set memory_policy to 'offload' or 'lowvram', or dtype to fp16/bf16"):
            return SonicPipeline.from_pretrained(self.models_dir, device=self.device, dtype=self.dtype,
                                                 memory_policy=self.memory_policy, svd_checkpoint=self.svd_checkpoint,
                                                 face_detector=self.use_face_detector, interpolation=True)

    def __getattr__(self, name: str):
        # Only called for names not set in __init__: the pipeline's stages (prepare, encode, ...).
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.pipeline(), name)

    def __repr__(self) -> str:
        state = "loaded" if self.loaded else "not loaded yet"
        return f"LazySonicPipeline({self.models_dir}, {self.memory_policy}, {state})"


# ------------------------------------------------------------------------------ audio
class SonicAudioLoader:
    """Loads an audio file from ComfyUI's input folder as a core AUDIO dict."""

    DESCRIPTION = "Loads speech from the input folder (wav, mp3, flac, ogg/opus, m4a/aac, or the audio of a video file)."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("AUDIO", "FLOAT")
    RETURN_NAMES = ("audio", "duration")
    OUTPUT_TOOLTIPS = ("The decoded audio at its own sample rate and channels.", "Length of the audio in seconds.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "audio": (list_input_files(AUDIO_EXTENSIONS), {
                "audio_upload": True,
                "tooltip": "An audio file in ComfyUI's input folder (upload one with the button)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, audio):
        try:
            resolve_media_path(audio, kind="audio")
        except UnsafePathError as exc:
            return str(exc)
        return True

    @classmethod
    def IS_CHANGED(cls, audio):
        return file_fingerprint(resolve_media_path(audio, kind="audio"))

    def load(self, audio):
        import torch

        from sonic.inputs.audio import load_audio

        path = resolve_media_path(audio, kind="audio")
        clip = load_audio(path)
        waveform = torch.from_numpy(clip.original).float().unsqueeze(0)  # [1, C, T]
        seconds = waveform.shape[-1] / float(clip.original_rate)
        return ({"waveform": waveform, "sample_rate": int(clip.original_rate)}, seconds)


# ------------------------------------------------------------------------------ image
class SonicImageLoader:
    """Loads a portrait from ComfyUI's input folder (the core LoadImage output works equally)."""

    DESCRIPTION = "Loads a portrait image from the input folder as IMAGE (+ MASK from its alpha channel)."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    OUTPUT_TOOLTIPS = ("RGB image [1, H, W, 3] in 0..1; transparent parts are shown over white, as Sonic sees them.",
                       "1 where the image is transparent (64x64 zeros without alpha).")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": (list_input_files(IMAGE_EXTENSIONS), {
                "image_upload": True,
                "tooltip": "A portrait in ComfyUI's input folder (upload one with the button)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, image):
        try:
            resolve_media_path(image, kind="image")
        except UnsafePathError as exc:
            return str(exc)
        return True

    @classmethod
    def IS_CHANGED(cls, image):
        return file_fingerprint(resolve_media_path(image, kind="image"))

    def load(self, image):
        import numpy as np
        import torch

        from sonic.inputs.image import load_image

        path = resolve_media_path(image, kind="image")
        # The pipeline's own decoding: 16-bit scaled, transparency over white, grey, EXIF rotation.
        rgb = load_image(path)
        pixels = torch.from_numpy(rgb.astype(np.float32) / 255.0).unsqueeze(0)
        return (pixels, transparency_mask(path))


def transparency_mask(path: str):
    """Core LoadImage's MASK: 1 - alpha [1, H, W] when the file has alpha, else 64x64 zeros."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    with Image.open(path) as opened:
        has_alpha = "A" in opened.getbands() or (opened.mode == "P" and "transparency" in opened.info)
        if not has_alpha:
            return torch.zeros((1, 64, 64), dtype=torch.float32)
        try:
            upright = ImageOps.exif_transpose(opened)  # the same orientation as the pixels
        except Exception:  # load_image ignores a corrupt EXIF block too
            upright = opened
        alpha = np.asarray(upright.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0
    return 1.0 - torch.from_numpy(alpha).unsqueeze(0)
