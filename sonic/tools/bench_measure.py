"""Measuring instruments of the benchmark: synthetic inputs, clocks, memory monitors, FLOP counts,
device peaks and the code version."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from ..config import SAMPLE_RATE
from ..errors import ParameterError
from .bench_settings import NUM_BRANCHES, PEAK_TFLOPS


# ------------------------------------------------------------------------------------ inputs
def synthetic_speech(seconds: float, *, sample_rate: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """Speech-like float32 mono audio: a gliding voiced source with two formant-like partials,
    syllable-rate (4 Hz) amplitude modulation, short pauses and a little breath noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    pitch = 140 + 25 * np.sin(2 * np.pi * 0.7 * t) + 10 * np.sin(2 * np.pi * 2.3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voice = sum(amp * np.sin(k * phase) for k, amp in ((1, 0.5), (2, 0.25), (3, 0.15), (5, 0.08)))
    formant = 0.12 * np.sin(2 * np.pi * (700 + 300 * np.sin(2 * np.pi * 4 * t)) * t)
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t + 0.3 * np.sin(2 * np.pi * 0.5 * t)), 0, None) ** 0.7
    pauses = (np.sin(2 * np.pi * 0.25 * t) > -0.8).astype(np.float64)
    signal = (voice + formant) * syllables * pauses + 0.01 * rng.standard_normal(t.size)
    return (0.5 * signal / max(np.abs(signal).max(), 1e-6)).astype(np.float32)


def synthetic_portrait(size: int) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """A size x size uint8 RGB picture with a face-like oval, and that oval's box (pixels)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.empty((size, size, 3), np.float32)
    img[...] = np.stack([0.25 + 0.2 * yy, 0.3 + 0.1 * xx, 0.45 - 0.1 * yy], -1)
    face = ((xx - 0.5) / 0.22) ** 2 + ((yy - 0.5) / 0.3) ** 2 <= 1
    img[face] = (0.85, 0.68, 0.58)
    for cx in (0.42, 0.58):  # eyes
        img[((xx - cx) / 0.03) ** 2 + ((yy - 0.43) / 0.015) ** 2 <= 1] = (0.15, 0.1, 0.1)
    img[((xx - 0.5) / 0.07) ** 2 + ((yy - 0.64) / 0.02) ** 2 <= 1] = (0.6, 0.2, 0.25)  # mouth
    box = (0.28 * size, 0.2 * size, 0.72 * size, 0.8 * size)
    return (img * 255).round().astype(np.uint8), box


# ------------------------------------------------------------------------------------ measuring
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageClock:
    """Wall time per stage: `lap(name)` synchronises the device and books the time since the last lap."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}
        self._last = 0.0

    def start(self) -> None:
        synchronize(self.device)
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        synchronize(self.device)
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


class TimedIterator:
    """Wraps a chunk iterator and adds up the wall time spent inside its `next()` (seconds) and
    the frames it yielded. In a chain of generators, a stage's own time is its total minus its
    source's total. Chunks are CPU tensors, so a device is already synchronised at each yield."""

    def __init__(self, source: Iterable[torch.Tensor]):
        self._source = iter(source)
        self.seconds = 0.0
        self.frames = 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        start = time.perf_counter()
        try:
            chunk = next(self._source)
        finally:
            self.seconds += time.perf_counter() - start
        self.frames += int(chunk.shape[0])
        return chunk


def current_rss_bytes() -> int | None:
    """Resident set size of this process (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class HostMemoryMonitor:
    """Peak resident host memory while active, sampled every `interval` seconds in a thread."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = current_rss_bytes() or 0
        self.start_bytes = self.peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, current_rss_bytes() or 0)

    def __enter__(self) -> "HostMemoryMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_bytes() or 0)


@contextlib.contextmanager
def attention_backend(name: str, device: torch.device):
    """Restrict PyTorch SDPA to one backend ("auto" leaves PyTorch's own choice)."""
    if name == "auto":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[name]
    with sdpa_kernel([backend]):
        yield


def check_attention_backend(name: str, device: torch.device) -> None:
    """Refuse backends the device does not have, before any heavy work."""
    if name in ("efficient", "cudnn") and device.type != "cuda":
        raise ParameterError(f"--attention {name} needs a CUDA GPU; on {device.type} use auto, flash or math")


@torch.no_grad()
def count_unet_flops(unet, *, latent_height: int, latent_width: int, frames: int, tokens: int,
                     batch: int = NUM_BRANCHES, dtype: torch.dtype = torch.bfloat16) -> int:
    """Floating-point operations (a multiply-add counts 2) of ONE Sonic UNet call: `batch` branches x
    `frames` frames of latent_height x latent_width cells, `tokens` audio tokens per frame, with a face
    mask, counted with `FlopCounterMode`.

    unet: a UNet config dict (a random UNet is built on the meta device in `dtype`: no memory, no
    arithmetic) or a `SonicUNet` (run as is on its device). On the meta device SDPA decomposes into
    matrix products, which the counter sees; a CPU run would hide the attention inside the CPU flash
    kernel, which the counter does not know (run it under the MATH backend to compare).
    """
    from torch.utils.flop_counter import FlopCounterMode

    if not isinstance(unet, torch.nn.Module):
        from ..models.unet import build_sonic_unet

        with torch.device("meta"):
            unet = torch.nn.Module.to(build_sonic_unet(unet), dtype)
    device, dtype = unet.device, unet.dtype
    width = unet.context_dim
    num_ids = unet.add_embedding.linear_1.in_features // unet.add_time_proj.num_channels

    def zeros(*shape, kind=dtype):
        return torch.zeros(shape, device=device, dtype=kind)

    args = (zeros(batch, frames, unet.conv_in.in_channels, latent_height, latent_width),
            torch.tensor(0.5, device=device), zeros(batch * frames, 1, width), zeros(batch * frames, tokens, width),
            zeros(batch, num_ids), zeros(1, 1, 8 * latent_height, 8 * latent_width, kind=torch.float32))
    counter = FlopCounterMode(display=False)
    with counter:
        unet(*args)
    return int(counter.get_total_flops())


def device_peak_tflops(device: torch.device, dtype: torch.dtype) -> tuple[float | None, str]:
    """(dense peak TFLOP/s for dtype, device name); peak None when unknown (CPU, unlisted GPU)."""
    if device.type != "cuda":
        return None, platform.processor() or platform.machine()
    name = torch.cuda.get_device_name(device)
    key = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype)
    if key is None:
        key = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"
    upper = name.upper()
    for words, peaks in PEAK_TFLOPS:
        if all(w in upper for w in words):
            return peaks[key], name
    return None, name


def git_commit() -> str | None:
    """The checkout's commit (with "+dirty" when files differ), or None outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


