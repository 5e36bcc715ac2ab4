"""`python -m sonic bench`: time the real pipeline end to end and say where the time goes.

    python -m sonic bench --device cuda --json bench.json            # full size, random weights
    python -m sonic bench --device cpu                               # tiny models, quick check
    python -m sonic bench --flops-only --resolution 512              # FLOPs per UNet call (meta device)

What runs is the product path: `SonicPipeline.prepare -> encode -> sample`, then decode, RIFE
and the MP4 writer streamed chunk by chunk (`decode_iter -> interpolate_iter -> write_mp4`), on
a synthetic portrait and synthetic speech. On a GPU the default models are full-size with random
weights (`sonic.random_models`: timing does not depend on weight values); `--models DIR` uses
real weights. On the CPU the default is the tiny zoo (`sonic.zoo`), a plumbing check in seconds.

Method (see benchmarks/README.md): warm-up runs (2 denoising steps each: compilation, kernel
selection and allocator growth) are excluded; each of `--repeats` measured runs is timed stage by
stage with a device synchronisation at every stage boundary only (never inside the denoising
loop: per-window times come from CUDA events); the report gives medians. FLOPs per UNet call are
counted with `torch.utils.flop_counter.FlopCounterMode` on a meta-device copy of the UNet, so
MFU = FLOPs x calls / sampling seconds / the device's dense peak for the dtype.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from .config import SAMPLE_RATE, SIZE_MULTIPLE, SonicConfig
from .errors import DeviceMemoryError, ParameterError, SonicError

SCHEMA = "sonic-bench/1"
STAGES = ("prepare", "audio", "conditioning", "sampling", "decode", "interpolation", "encode_mux")
ATTENTION_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")
MEMORY_POLICIES = ("keep", "offload", "lowvram")
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

    def resolved_size(self, device: torch.device) -> str:
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
        from .models.unet import build_sonic_unet

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
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------------------------ pipeline
def build_pipeline(settings: BenchSettings, device: torch.device, dtype: torch.dtype, size: str, workdir: Path):
    """The pipeline under test: real weights, full-size random weights or the tiny zoo."""
    from .pipeline import SonicPipeline

    policy = settings.memory_policy
    if size == "real":
        return SonicPipeline.from_pretrained(settings.models, device=device, dtype=dtype, memory_policy=policy,
                                             face_detector=False, interpolation=settings.interpolate)
    if size == "tiny":
        from .zoo import write_tiny_zoo

        zoo = write_tiny_zoo(workdir / "tiny_zoo", layout="official")
        return SonicPipeline.from_pretrained(zoo, device=device, dtype=dtype, memory_policy=policy,
                                             face_detector=False, interpolation=settings.interpolate)
    from .random_models import build_random_models

    # Create the weights where they rest under the policy (the pipeline moves the UNet for lowvram).
    where = device if policy == "keep" else torch.device("cpu")
    models = build_random_models(device=where, dtype=dtype, seed=settings.seed, interpolation=settings.interpolate)
    return SonicPipeline(models, device=device, dtype=dtype, memory_policy=policy)


def expected_resident(policy: str, stage: str) -> tuple[set[str], set[str]]:
    """(models that must be, models that may be) on the device during a stage ("sampling", "decode",
    "interpolate") under a memory policy. Decode and RIFE are streamed into each other, so while the
    decoder is alive the VAE and RIFE share the device; RIFE's last batch may run after it finished."""
    everything = {"unet", "vae", "image_encoder", "whisper", "audio2token", "audio2bucket", "rife"}
    if policy == "keep":
        return everything, everything
    resting = {"unet"} if policy == "lowvram" else set()
    least, most = {"sampling": ({"unet"}, {"unet"}), "decode": ({"vae", "rife"}, {"vae", "rife"}),
                   "interpolate": ({"rife"}, {"vae", "rife"})}[stage]
    return resting | least, resting | most


def run_once(pipe, settings: BenchSettings, image, face_box, wave: np.ndarray, steps: int, video_path: Path,
             device: torch.device) -> dict[str, Any]:
    """One generation with per-stage timing; returns the run's record."""
    from .pipeline import soundtrack_for
    from .video import write_mp4

    clock = StageClock(device)
    placement: dict[str, dict] = {}
    call_marks: list[Any] = []

    def on_progress(info) -> None:
        if info.stage == "conditioning":
            # 0: start, 1: Whisper done, 2: CLIP + VAE encode done, 3: audio adapters done
            clock.lap({0: "prepare", 1: "audio", 2: "conditioning", 3: "audio"}[info.done])
            return
        if info.stage not in placement:
            placement[info.stage] = placement_record(pipe, info.stage, device)
        if info.stage == "sampling":
            # No host synchronisation inside the loop: CUDA events, read after the loop.
            if device.type == "cuda":
                event = torch.cuda.Event(enable_timing=True)
                event.record()
                call_marks.append(event)
            else:
                call_marks.append(time.perf_counter())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    clock.start()
    job = pipe.prepare(image, (wave, SAMPLE_RATE), face_box=face_box, crop=False,
                       min_resolution=settings.resolution)
    cond = pipe.encode(job, callback=on_progress)
    clock.lap("conditioning")

    with attention_backend(settings.attention, device):
        if device.type == "cuda":
            start_event = torch.cuda.Event(enable_timing=True)
            start_event.record()
            call_marks.insert(0, start_event)
        else:
            call_marks.insert(0, time.perf_counter())
        latents = pipe.sample(cond, inference_steps=steps, seed=settings.seed, callback=on_progress)
    clock.lap("sampling")  # sample() returns CPU latents: already synchronised
    if device.type == "cuda":
        window_seconds = [a.elapsed_time(b) / 1000 for a, b in zip(call_marks, call_marks[1:])]
    else:
        window_seconds = [b - a for a, b in zip(call_marks, call_marks[1:])]

    generated = job.timeline.generated_frames
    decoded = TimedIterator(pipe.decode_iter(latents, decode_chunk_size=settings.decode_chunk_size,
                                             callback=on_progress))
    last: TimedIterator = decoded
    interpolated = None
    if settings.interpolate:
        interpolated = last = TimedIterator(pipe.interpolate_iter(decoded, total=generated, callback=on_progress))
    fps = job.timeline.output_fps(settings.interpolate)
    # N generated frames, 2N after RIFE (see sonic.interpolate): the soundtrack is cut to match.
    output_frames = generated * (2 if settings.interpolate else 1)
    start = time.perf_counter()
    write_mp4(video_path, last, fps=fps, audio=soundtrack_for(job, output_frames / fps),
              sample_rate=job.audio.original_rate, preset=settings.x264_preset, overwrite=True,
              metadata={"benchmark": True})
    chain = time.perf_counter() - start
    clock.add("decode", decoded.seconds)
    if interpolated is not None:
        clock.add("interpolation", interpolated.seconds - decoded.seconds)
    clock.add("encode_mux", chain - last.seconds)
    if last.frames != output_frames:
        raise RuntimeError(f"the streamed chain produced {last.frames} frames, expected {output_frames}")

    stages = {name: clock.seconds.get(name, 0.0) for name in STAGES}
    total = sum(stages.values())
    video_seconds = output_frames / fps
    calls = max(len(window_seconds), 1)
    return {
        "stages": stages, "total_seconds": total, "video_seconds": video_seconds, "output_frames": output_frames,
        "generated_frames": generated, "fps": fps, "steps": steps, "unet_calls": len(window_seconds),
        "windows_per_step": len(window_seconds) // steps,
        "seconds_per_video_second": total / video_seconds,
        "seconds_per_step": stages["sampling"] / steps,
        "seconds_per_unet_call": statistics.median(window_seconds) if window_seconds else None,
        "sampling_seconds_per_call": stages["sampling"] / calls,
        "peak_device_memory_gb": torch.cuda.max_memory_allocated(device) / GB if device.type == "cuda" else None,
        "placement": placement,
        "latent_size": [int(cond.ref_latent.shape[-2]), int(cond.ref_latent.shape[-1])],
    }


def placement_record(pipe, stage: str, device: torch.device) -> dict[str, Any]:
    """Which models are on the device during a stage: the policy's bookkeeping, and (on a GPU) the truth."""
    resident = set(pipe.resident_modules())
    least, most = expected_resident(pipe.memory_policy, stage)
    record: dict[str, Any] = {"resident": sorted(resident), "required": sorted(least), "allowed": sorted(most)}
    if device.type != "cpu":
        actual = {k for k, v in pipe.module_devices().items() if torch.device(v).type == device.type}
        record["on_device"] = sorted(actual)
        record["ok"] = actual == resident and least <= resident <= most
    elif pipe.memory_policy == "keep":
        record["ok"] = least <= resident <= most
    else:  # on the CPU the resting place is the compute device: there is nothing to observe
        record["ok"] = None
    return record


# ------------------------------------------------------------------------------------ the benchmark
def run_benchmark(settings: BenchSettings, *, log=print) -> dict[str, Any]:
    """Run the benchmark described by `settings`; returns the JSON report (also written to json_path)."""
    from .devices import resolve_device, resolve_dtype

    settings = settings.validate()
    if settings.flops_only:
        return flops_report(settings, log=log)
    device = resolve_device(None if settings.device == "auto" else settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    check_attention_backend(settings.attention, device)
    size = settings.resolved_size(device)
    settings = settings.with_defaults(size)
    if settings.compile and settings.memory_policy == "offload":
        raise ParameterError("--compile needs the UNet to stay on the device: use --memory-policy keep or lowvram")
    peak_tflops, device_name = device_peak_tflops(device, dtype)
    peak_tflops = settings.peak_tflops or peak_tflops
    previous_threads = torch.get_num_threads()  # a library call must not change the caller's torch
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="sonic-bench-") as tmp:
            workdir = Path(tmp)
            t0 = time.perf_counter()
            pipe = build_pipeline(settings, device, dtype, size, workdir)
            if settings.compile:
                pipe.models.unet.compile(mode=settings.compile_mode, dynamic=False)
            setup_seconds = time.perf_counter() - t0
            log(f"models ready in {setup_seconds:.1f} s ({size}); counting UNet FLOPs on the meta device")

            image, face_box = synthetic_portrait(settings.resolution)
            wave = synthetic_speech(settings.audio_seconds, seed=settings.seed)
            latent = settings.resolution // 8
            flops = count_unet_flops(pipe.models.unet.config, latent_height=latent, latent_width=latent,
                                     frames=pipe.config.frames_per_window,
                                     tokens=pipe.models.audio2token.context_tokens, dtype=dtype)
            video = workdir / "bench.mp4"

            warmups = []
            for i in range(settings.warmup):
                t = time.perf_counter()
                run_once(pipe, settings, image, face_box, wave, min(WARMUP_STEPS, settings.steps), video, device)
                warmups.append(time.perf_counter() - t)
                log(f"warm-up {i + 1}/{settings.warmup}: {warmups[-1]:.2f} s (excluded)")
            runs = []
            with HostMemoryMonitor() as host:
                for i in range(settings.repeats):
                    runs.append(run_once(pipe, settings, image, face_box, wave, settings.steps, video, device))
                    log(f"run {i + 1}/{settings.repeats}: {runs[-1]['total_seconds']:.2f} s")
            if settings.keep_video:
                import shutil

                shutil.copyfile(video, Path(settings.keep_video).expanduser())
    finally:
        torch.set_num_threads(previous_threads)

    report = summarize(settings, runs, warmups=warmups, flops=flops, peak_tflops=peak_tflops, device=device,
                       device_name=device_name, dtype=dtype, size=size, setup_seconds=setup_seconds,
                       host_peak=host.peak, host_start=host.start_bytes)
    write_json(report, settings.json_path)
    return report


def summarize(settings: BenchSettings, runs: list[dict], *, warmups, flops: int, peak_tflops, device, device_name,
              dtype, size, setup_seconds, host_peak, host_start) -> dict[str, Any]:
    def median(key: str):
        values = [r[key] for r in runs if r[key] is not None]
        return statistics.median(values) if values else None

    stages = {name: statistics.median(r["stages"][name] for r in runs) for name in STAGES}
    total = sum(stages.values())
    first = runs[0]
    sampling = stages["sampling"]
    achieved = flops * first["unet_calls"] / sampling if sampling > 0 else None
    call_seconds = median("seconds_per_unet_call")
    floor = (flops * first["unet_calls"] / (peak_tflops * 1e12) / first["video_seconds"]) if peak_tflops else None
    placement_ok = [rec["ok"] for r in runs for rec in r["placement"].values() if rec["ok"] is not None]
    return {
        "schema": SCHEMA,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "command": settings.command,
        "device": {"type": device.type, "name": device_name, "dtype": str(dtype).replace("torch.", ""),
                   "peak_tflops": peak_tflops, "torch": torch.__version__,
                   "cuda": torch.version.cuda if device.type == "cuda" else None,
                   "threads": torch.get_num_threads()},
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("command", "json_path", "flops_only")},
        "models": {"real": f"real weights from {settings.models}", "full": "full-size, random weights",
                   "tiny": "tiny zoo (golden fixtures), random weights"}[size],
        "method": (f"median of {len(runs)} measured runs; {len(warmups)} warm-up run(s) of "
                   f"{min(WARMUP_STEPS, settings.steps)} steps excluded; device synchronised at stage boundaries "
                   "only; decode, interpolation and MP4 encoding streamed chunk by chunk"),
        "video": {"seconds": first["video_seconds"], "frames": first["output_frames"], "fps": first["fps"],
                  "generated_frames": first["generated_frames"], "unet_calls": first["unet_calls"],
                  "windows_per_step": first["windows_per_step"], "latent_size": first["latent_size"]},
        "seconds_per_video_second": total / first["video_seconds"],
        "seconds_per_step": sampling / first["steps"],
        "seconds_per_unet_call": call_seconds,
        "total_seconds": total,
        "peak_device_memory_gb": max((r["peak_device_memory_gb"] for r in runs
                                      if r["peak_device_memory_gb"] is not None), default=None),
        "peak_host_memory_gb": host_peak / GB if host_peak else None,
        "host_memory_at_start_gb": host_start / GB if host_start else None,
        "unet_flops_per_call": flops,
        "unet_tflops_achieved": achieved / 1e12 if achieved else None,
        "mfu": achieved / (peak_tflops * 1e12) if achieved and peak_tflops else None,
        "mfu_per_call": flops / call_seconds / (peak_tflops * 1e12) if call_seconds and peak_tflops else None,
        "floor_seconds_per_video_second": floor,
        "outside_unet_share": 1 - sampling / total if total > 0 else None,
        "stages": {name: {"seconds": s, "share": s / total if total > 0 else 0.0} for name, s in stages.items()},
        "placement_ok": all(placement_ok) if placement_ok else None,
        "setup_seconds": setup_seconds,
        "warmup_seconds": warmups,
        "runs": runs,
    }


def flops_report(settings: BenchSettings, *, log=print) -> dict[str, Any]:
    """FLOPs of one full-size UNet call at the requested resolution, and the compute floor per GPU."""
    from .random_models import AUDIO2TOKEN_TOKENS, svd_config

    resolution = settings.resolution or 512
    config = svd_config("unet")
    frames = SonicConfig().frames_per_window
    flops = count_unet_flops(config, latent_height=resolution // 8, latent_width=resolution // 8, frames=frames,
                             tokens=AUDIO2TOKEN_TOKENS)
    # UNet calls per second of output video: steps x windows, windows = 12.5 frames per second / 25 per window.
    calls_per_video_second = (settings.steps or 25) * SonicConfig().fps / frames
    floors = {" ".join(words): flops * calls_per_video_second / (peaks["bf16"] * 1e12)
              for words, peaks in PEAK_TFLOPS}
    report = {"schema": SCHEMA, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "commit": git_commit(), "command": settings.command, "resolution": resolution,
              "unet_call": f"{NUM_BRANCHES} branches x {frames} frames x {resolution // 8}x{resolution // 8} latents",
              "unet_flops_per_call": flops, "unet_calls_per_video_second": calls_per_video_second,
              "floor_seconds_per_video_second_bf16": floors}
    log(f"UNet FLOPs per call at {resolution} px ({report['unet_call']}): {flops / 1e12:.2f} TFLOP")
    log(f"UNet calls per second of video at {settings.steps or 25} steps: {calls_per_video_second:g}")
    for name, floor in floors.items():
        log(f"  compute floor on {name} (bf16 dense peak): {floor:.3f} s per video second")
    write_json(report, settings.json_path)
    return report


def write_json(report: dict, path: str | None) -> None:
    if path is None:
        return
    target = Path(path).expanduser()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ParameterError(f"cannot write the JSON report to {target}: {exc}") from None


def format_table(report: dict) -> str:
    """The human-readable summary printed by the command."""
    s = report["settings"]
    d = report["device"]
    lines = [f"Sonic bench: {d['type']} ({d['name']}), {d['dtype']}, {s['resolution']} px, "
             f"{s['audio_seconds']:g} s audio, {s['steps']} steps, attention {s['attention']}, "
             f"compile {'on' if s['compile'] else 'off'}, memory policy {s['memory_policy']}",
             f"models: {report['models']}; {report['method']}",
             f"{'stage':<16}{'seconds':>10}{'share':>9}"]
    for name, stage in report["stages"].items():
        lines.append(f"{name:<16}{stage['seconds']:>10.3f}{100 * stage['share']:>8.1f}%")
    lines.append(f"{'total':<16}{report['total_seconds']:>10.3f}   (video {report['video']['seconds']:.2f} s, "
                 f"{report['video']['frames']} frames, {report['video']['unet_calls']} UNet calls)")

    def fmt(value, spec=".3f", unit=""):
        return "n/a" if value is None else f"{value:{spec}}{unit}"

    lines += [f"seconds per video second: {fmt(report['seconds_per_video_second'])}   "
              f"seconds per step: {fmt(report['seconds_per_step'])}   "
              f"per UNet call (median window): {fmt(report['seconds_per_unet_call'], '.4f', ' s')}",
              f"UNet: {report['unet_flops_per_call'] / 1e12:.3f} TFLOP per call, achieved "
              f"{fmt(report['unet_tflops_achieved'], '.2f', ' TFLOP/s')}, MFU {fmt(report['mfu'] and 100 * report['mfu'], '.1f', '%')}"
              f" of {fmt(d['peak_tflops'], '.1f', ' TFLOP/s')}; compute floor "
              f"{fmt(report['floor_seconds_per_video_second'])} s per video second",
              f"outside the UNet: {fmt(report['outside_unet_share'] and 100 * report['outside_unet_share'], '.1f', '%')}"
              f"   peak device memory: {fmt(report['peak_device_memory_gb'], '.2f', ' GB')}"
              f"   peak host memory: {fmt(report['peak_host_memory_gb'], '.2f', ' GB')}"
              f"   placement as documented: {report['placement_ok']}"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sonic bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--json", dest="json_path", metavar="OUT.json", help="write the full report here")
    p.add_argument("--size", default="auto", choices=SIZES,
                   help="full-size random models or the tiny zoo (auto: full on CUDA, tiny elsewhere)")
    p.add_argument("--models", metavar="DIR", help="real weights folder (official or ComfyUI layout) instead")
    p.add_argument("--resolution", type=int, help="model input side in pixels (full: 512, 768, 1024; default 512, tiny 64)")
    p.add_argument("--audio-seconds", type=float, help="seconds of synthetic speech (default 10, tiny 2)")
    p.add_argument("--steps", type=int, help="denoising steps (default 25, tiny 2)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPUs that have it), fp32, bf16, fp16")
    p.add_argument("--attention", default="auto", choices=ATTENTION_BACKENDS, help="SDPA backend for the UNet")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (compilation is in the warm-up)")
    p.add_argument("--compile-mode", help="torch.compile mode, e.g. max-autotune")
    p.add_argument("--memory-policy", default="keep", choices=MEMORY_POLICIES)
    p.add_argument("--repeats", type=int, help="measured runs, medians reported (default 3, tiny 2)")
    p.add_argument("--warmup", type=int, default=1, help=f"excluded warm-up runs of {WARMUP_STEPS} steps (default 1)")
    p.add_argument("--decode-chunk-size", type=int, help="frames per VAE decode call (default 8, the official value)")
    p.add_argument("--no-interpolate", dest="interpolate", action="store_false", help="skip RIFE (12.5 fps)")
    p.add_argument("--x264-preset", default="medium", help="x264 preset of the MP4 writer (default medium)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--peak-tflops", type=float, help="device peak for MFU when the GPU is not in the table")
    p.add_argument("--keep-video", metavar="OUT.mp4", help="keep the last measured video")
    p.add_argument("--flops-only", action="store_true",
                   help="only count the full-size UNet FLOPs per call at --resolution (meta device, no GPU)")
    return p


def settings_from_args(argv: list[str]) -> BenchSettings:
    args = vars(build_parser().parse_args(argv))
    return BenchSettings(command="python -m sonic bench " + " ".join(argv), **args).validate()


def bench_command(argv: list[str]) -> int:
    """Entry point of `python -m sonic bench`; returns the exit status (0 ok, 2 bad input or failure)."""
    try:
        settings = settings_from_args(list(argv))
        report = run_benchmark(settings, log=lambda msg: print(msg, file=sys.stderr))
    except SystemExit as exc:  # argparse: --help or a usage error (already printed)
        return int(exc.code or 0)
    except DeviceMemoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError:
        print("error: the device ran out of memory while building or running the models; try "
              "--memory-policy lowvram, a smaller --resolution or --dtype bf16", file=sys.stderr)
        return 2
    except SonicError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.flops_only:
        return 0
    print(format_table(report))
    if settings.json_path:
        print(f"report written to {settings.json_path}")
    return 0
