"""Benchmark settings: what `python -m sonic bench` can be asked, its defaults and checks.

Kept free of torch so that the command line can be built without importing it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import SIZE_MULTIPLE
from ..errors import ParameterError
from ..placement import MEMORY_POLICIES

SCHEMA = "sonic-bench/1"
STAGES = ("prepare", "audio", "conditioning", "sampling", "decode", "interpolation", "encode_mux")
ATTENTION_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")
SIZES = ("auto", "tiny", "full")
NUM_BRANCHES = 3  # uncond, appearance, audio: one batched UNet call per window
WARMUP_STEPS = 2
GB = 1e9

# Dense (no sparsity) tensor-core peaks in TFLOP/s from the vendors' datasheets, matched against
# torch.cuda.get_device_name() in order (first match wins). "tf32" applies to fp32 when
# torch.backends.cuda.matmul.allow_tf32 is on. Override with --peak-tflops.
PEAK_TFLOPS: tuple[tuple[tuple[str, ...], dict[str, float]], ...] = (
    (("H200",), {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (("H100", "PCIE"), {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2}),
    (("H100", "NVL"), {"bf16": 835.0, "fp16": 835.0, "tf32": 417.5, "fp32": 60.0}),
    (("H100",), {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM / HBM3
    (("A100",), {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (("L40S",), {"bf16": 362.1, "fp16": 362.1, "tf32": 183.0, "fp32": 91.6}),
    (("L4",), {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    (("A10G",), {"bf16": 70.0, "fp16": 70.0, "tf32": 35.0, "fp32": 31.2}),
    (("A10",), {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
)


# ------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class BenchSettings:
    """One benchmark configuration. None fields take the defaults of the size ("full" or "tiny")."""

    device: str = "auto"
    size: str = "auto"  # auto: full-size random weights on CUDA, the tiny zoo elsewhere
    models: str | None = None  # a real weights folder instead of random/tiny models
    resolution: int | None = None  # pixels, model input side (square portrait)
    audio_seconds: float | None = None  # seconds of synthetic speech
    steps: int | None = None  # denoising steps
    dtype: str = "auto"
    attention: str = "auto"  # SDPA backend for the UNet
    compile: bool = False  # torch.compile the UNet
    compile_mode: str | None = None  # torch.compile mode, e.g. "max-autotune"
    memory_policy: str = "keep"
    repeats: int | None = None  # measured runs (medians reported)
    warmup: int = 1  # excluded runs of WARMUP_STEPS steps
    decode_chunk_size: int | None = None  # None: the config's (8, the official value)
    interpolate: bool = True
    x264_preset: str = "medium"  # what write_mp4 uses by default
    seed: int = 0
    peak_tflops: float | None = None  # override the device's peak for MFU
    threads: int | None = None  # torch CPU threads (None: torch's default)
    json_path: str | None = None
    keep_video: str | None = None  # keep the last measured MP4 here
    flops_only: bool = False
    command: str = ""

    def resolved_size(self, device) -> str:
        if self.models is not None:
            return "real"
        if self.size != "auto":
            return self.size
        return "full" if device.type == "cuda" else "tiny"

    def with_defaults(self, size: str) -> "BenchSettings":
        full = size in ("full", "real")
        defaults = dict(resolution=512 if full else 64, audio_seconds=10.0 if full else 2.0,
                        steps=25 if full else 2, repeats=3 if full else 2)
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def validate(self) -> "BenchSettings":
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ParameterError(message)

        need(self.size in SIZES, f"--size must be one of {SIZES}, got {self.size!r}")
        need(self.attention in ATTENTION_BACKENDS, f"--attention must be one of {ATTENTION_BACKENDS}, got {self.attention!r}")
        need(self.memory_policy in MEMORY_POLICIES,
             f"--memory-policy must be one of {MEMORY_POLICIES}, got {self.memory_policy!r}")
        if self.resolution is not None:
            need(SIZE_MULTIPLE <= self.resolution <= 2048 and self.resolution % SIZE_MULTIPLE == 0,
                 f"--resolution must be a multiple of {SIZE_MULTIPLE} between {SIZE_MULTIPLE} and 2048 pixels "
                 f"(512, 768 or 1024 for the real model), got {self.resolution}")
        if self.audio_seconds is not None:
            need(math.isfinite(self.audio_seconds) and 0.2 <= self.audio_seconds <= 600,
                 f"--audio-seconds must be between 0.2 and 600, got {self.audio_seconds}")
        if self.steps is not None:
            need(1 <= self.steps <= 1000, f"--steps must be between 1 and 1000, got {self.steps}")
        if self.repeats is not None:
            need(1 <= self.repeats <= 100, f"--repeats must be between 1 and 100, got {self.repeats}")
        need(self.threads is None or 1 <= self.threads <= 1024, f"--threads must be positive, got {self.threads}")
        need(0 <= self.warmup <= 10, f"--warmup must be between 0 and 10, got {self.warmup}")
        need(self.peak_tflops is None or self.peak_tflops > 0, f"--peak-tflops must be positive, got {self.peak_tflops}")
        if self.decode_chunk_size is not None:
            need(1 <= self.decode_chunk_size <= 1000,
                 f"--decode-chunk-size must be between 1 and 1000, got {self.decode_chunk_size}")
        if self.models is not None:
            need(Path(self.models).expanduser().is_dir(), f"--models {self.models} is not a folder")
        return self
