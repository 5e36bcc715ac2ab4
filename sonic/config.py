"""One typed configuration for a Sonic run.

`SonicConfig` holds what a user may change; its defaults equal the official
`config/inference/sonic.yaml` (SPEC section 1.2) plus the arguments the official `demo.py`
passes (`min_resolution=512`, `inference_steps=25`, `expand_ratio=0.5`). It is frozen: every
run gets its own value (`dataclasses.replace`), so nothing leaks between runs the way the
official class-level config does.

The module-level constants below are facts of the released model (rates, window sizes,
normalisation), not settings: changing them breaks compatibility with the weights.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import ParameterError

# --- Audio rates (SPEC 3) -------------------------------------------------------------------
SAMPLE_RATE = 16_000  # Hz, what Whisper and the length arithmetic use
SAMPLES_PER_AUDIO_FRAME = 640  # 40 ms: one "audio frame" at 25 fps
AUDIO_FRAMES_PER_GENERATED_FRAME = 2  # official `step`: 25 fps audio frames -> 12.5 fps video
WHISPER_CHUNK_SAMPLES = 480_000  # 30 s: one Whisper encoder call
WHISPER_CHUNK_MEL_FRAMES = 3000  # log-mel frames per chunk (hop 160)
WHISPER_CHUNK_STEPS = 1500  # encoder output steps per chunk (50 Hz)
WHISPER_STEPS_PER_AUDIO_FRAME = 2

# --- Per-frame audio windows (SPEC 3.3) -----------------------------------------------------
TOKEN_WINDOW = 10  # Whisper steps fed to audio2token per generated frame
TOKEN_WINDOW_PAD = (4, 6)  # zero steps before / after the hidden-state sequence
TOKEN_WINDOW_LAYERS = 5  # hidden states kept: embeddings + 4 encoder layers
BUCKET_WINDOW = 50  # Whisper steps (last layer) fed to audio2bucket per generated frame
BUCKET_WINDOW_PAD = (24, 26)
BUCKET_SCALE = 16.0  # bucket = 16 * audio2bucket(...) + 16
BUCKET_SHIFT = 16.0

# --- Image normalisation (SPEC 2.3) ---------------------------------------------------------
LATENT_DOWNSCALE = 8  # pixels per latent cell
SIZE_MULTIPLE = 64  # model-resolution sides are multiples of this
CLIP_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VAE_SCALING_FACTOR = 0.18215  # hard-coded in the official pipeline (not read from the VAE config)

# --- Input safety -----------------------------------------------------------------------------
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # decoding cap: bigger pictures are almost surely mistakes (or bombs)

# --- Post-processing (shared by the library and the ComfyUI PostProcess node) -------------------
MAX_SYNC_SHIFT_MS = 1000.0  # largest lip-sync correction, either way
DEFAULT_FEATHER_PX = 24  # paste-back blend width at the crop's inner edges, original pixels

# --- Face detector (SPEC 2.1) ---------------------------------------------------------------
YOLO_SHORT_SIDE = 416
YOLO_STRIDE_MULTIPLE = 32
YOLO_CONF_THRESHOLD = 0.5
YOLO_IOU_THRESHOLD = 0.45


# --- Ranges of the numeric settings ------------------------------------------------------------
@dataclass(frozen=True)
class Range:
    """Closed interval of a setting's valid values; the CLI, the library and the nodes read these."""

    low: float
    high: float
    unit: str = ""

    def contains(self, value) -> bool:
        return self.low <= value <= self.high

    def describe(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"between {self.low:g} and {self.high:g}{unit}"


RANGES: dict[str, Range] = {
    "min_resolution": Range(SIZE_MULTIPLE, 2048, "px"),
    "expand_ratio": Range(0.0, 5.0),
    "face_mask_area": Range(0.01, 10.0),
    "inference_steps": Range(1, 1000),
    "i2i_noise_strength": Range(0.01, 1.0),
    "dynamic_scale": Range(0.0, 10.0),
    "motion_scale": Range(0.0, 10.0),
    "min_appearance_guidance": Range(0.0, 20.0),
    "max_appearance_guidance": Range(0.0, 20.0),
    "audio_guidance": Range(0.0, 30.0),
    "ip_audio_scale": Range(0.0, 10.0),
    "noise_aug_strength": Range(0.0, 1.0),
    "fps": Range(1.0, 120.0, "frames per second"),
    "frames_per_window": Range(1, 1000, "frames"),
    "window_overlap": Range(0, 999, "frames"),
    "shift_offset": Range(0, 1000, "frames"),
    "seed": Range(0, 2**63 - 1),
    "decode_chunk_size": Range(1, 1000, "frames"),
}


def check_range(name: str, value) -> None:
    """Raise `ParameterError` unless `value` lies in `RANGES[name]`."""
    if not RANGES[name].contains(value):
        raise ParameterError(f"{name} must be {RANGES[name].describe()}, got {value!r}")


@dataclass(frozen=True)
class SonicConfig:
    """Settings of one generation. Defaults reproduce the official Sonic numbers."""

    # Portrait preparation
    min_resolution: int = 512  # px: short side of the model input; both sides snap to multiples of 64
    expand_ratio: float = 0.5  # crop margin around the face box, as a fraction of its width/height
    crop: bool = True  # crop a square around the face first (the official gradio app always does)
    face_mask_area: float = 1.1  # official `area`: face box enlarged this much for the audio mask
    max_pixels: int = 1024 * 1024  # cap on model-input pixels; larger inputs are scaled down with a warning
    # Cap on the input picture's own width x height (checked from the file header before decoding):
    # a bigger picture is refused with a clear error instead of exhausting memory. Not max_pixels above.
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    # Sampling
    inference_steps: int = 25  # denoising steps before `i2i_noise_strength` is applied
    i2i_noise_strength: float = 1.0  # fraction of the schedule run; 1.0 starts from pure noise
    dynamic_scale: float = 1.0  # official `motion_bucket_scale`: multiplies both buckets
    motion_scale: float = 1.0  # extra multiplier on the motion (head) bucket only; 1.0 = official
    min_appearance_guidance: float = 2.0  # image guidance at the first step (linear ramp)
    max_appearance_guidance: float = 2.0  # image guidance at the last step
    audio_guidance: float = 7.5  # audio guidance (constant)
    ip_audio_scale: float = 1.0  # weight of the audio cross-attention in every attn2
    noise_aug_strength: float = 0.0  # pixel noise on the reference before VAE encoding
    fps: float = 12.5  # frame rate fed to the UNet as the first added-time-id
    frames_per_window: int = 25  # official `n_sample_frames`: window length F
    window_overlap: int = 0  # frames shared by consecutive windows
    shift_offset: int = 7  # the window grid moves this many frames earlier every step
    seed: int = 72589  # official default seed; 0 is a valid seed

    # Decoding and output
    decode_chunk_size: int = 8  # frames per VAE temporal-decoder call (seams every chunk)
    interpolate: bool = True  # RIFE 2x: 12.5 -> 25 fps
    max_audio_seconds: float | None = None  # None: whole audio (official: silently 400 s)

    def replace(self, **changes) -> "SonicConfig":
        """A copy with some fields changed (unknown names are an error)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ParameterError(f"unknown setting(s) {unknown}; valid: {sorted(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes).validate()

    @property
    def run_steps(self) -> int:
        """Denoising steps actually run: `min(int(steps * strength), steps)` as in the reference."""
        return min(int(self.inference_steps * self.i2i_noise_strength), self.inference_steps)

    def validate(self) -> "SonicConfig":
        """Raise `ParameterError` naming the first absurd setting; return self when all is well."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ParameterError(message)

        for name in ("min_resolution", "max_pixels", "max_image_pixels", "inference_steps", "frames_per_window",
                     "window_overlap", "shift_offset", "seed", "decode_chunk_size"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool), f"{name} must be a whole number, got {value!r}")
        for name in ("crop", "interpolate"):
            need(isinstance(getattr(self, name), bool), f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("expand_ratio", "face_mask_area", "i2i_noise_strength", "dynamic_scale", "motion_scale",
                     "min_appearance_guidance", "max_appearance_guidance", "audio_guidance", "ip_audio_scale",
                     "noise_aug_strength", "fps"):
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                 f"{name} must be a finite number, got {value!r}")
        for name in RANGES:
            check_range(name, getattr(self, name))
        need(self.max_pixels >= 64 * 64, f"max_pixels must be at least 4096, got {self.max_pixels}")
        need(self.max_image_pixels >= 64 * 64,
             f"max_image_pixels must be at least 4096 (a 64x64 picture), got {self.max_image_pixels}")
        need(self.run_steps >= 1, (
            f"inference_steps={self.inference_steps} with i2i_noise_strength={self.i2i_noise_strength} leaves "
            f"int({self.inference_steps} * {self.i2i_noise_strength}) = 0 denoising steps; raise inference_steps "
            f"or i2i_noise_strength"))
        need(self.window_overlap < self.frames_per_window,
             f"window_overlap must be smaller than frames_per_window ({self.frames_per_window}), got {self.window_overlap}")
        need(self.max_audio_seconds is None or (isinstance(self.max_audio_seconds, (int, float))
                                                and math.isfinite(self.max_audio_seconds) and self.max_audio_seconds > 0),
             f"max_audio_seconds must be positive or None, got {self.max_audio_seconds}")
        return self
