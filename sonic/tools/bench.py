"""`python -m sonic bench`: time the real pipeline end to end and say where the time goes.

    python -m sonic bench --device cuda --json bench.json            # full size, random weights
    python -m sonic bench --device cpu                               # tiny models, quick check
    python -m sonic bench --flops-only --resolution 512              # FLOPs per UNet call (meta device)

What runs is the product path: `SonicPipeline.prepare -> encode -> sample`, then decode, RIFE
and the MP4 writer streamed chunk by chunk (`decode_iter -> interpolate_iter -> write_mp4`), on
a synthetic portrait and synthetic speech. On a GPU the default models are full-size with random
weights (`sonic.tools.random_models`: timing does not depend on weight values); `--models DIR` uses
real weights. On the CPU the default is the tiny zoo (`sonic.tools.zoo`), a plumbing check in seconds.

Method (see benchmarks/README.md): warm-up runs (2 denoising steps each: compilation, kernel
selection and allocator growth) are excluded; each of `--repeats` measured runs is timed stage by
stage with a device synchronisation at every stage boundary only (never inside the denoising
loop: per-window times come from CUDA events); the report gives medians. FLOPs per UNet call are
counted with `torch.utils.flop_counter.FlopCounterMode` on a meta-device copy of the UNet, so
MFU = FLOPs x calls / sampling seconds / the device's dense peak for the dtype.
"""


from __future__ import annotations

import datetime as _dt
import json
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import SAMPLE_RATE, SonicConfig
from ..errors import ParameterError
from ..placement import expected_resident
from .bench_measure import (HostMemoryMonitor, StageClock, TimedIterator, attention_backend, check_attention_backend,
                            count_unet_flops, device_peak_tflops, git_commit, synthetic_portrait, synthetic_speech)
from .bench_settings import GB, NUM_BRANCHES, PEAK_TFLOPS, SCHEMA, STAGES, WARMUP_STEPS, BenchSettings


# ------------------------------------------------------------------------------------ pipeline
def build_pipeline(settings: BenchSettings, device: torch.device, dtype: torch.dtype, size: str, workdir: Path):
    """The pipeline under test: real weights, full-size random weights or the tiny zoo."""
    from ..pipeline import SonicPipeline

    policy = settings.memory_policy
    if size == "real":
        return SonicPipeline.from_pretrained(settings.models, device=device, dtype=dtype, memory_policy=policy,
                                             face_detector=False, interpolation=settings.interpolate,
                                             devices=settings.devices)
    if size == "tiny":
        from .zoo import write_tiny_zoo

        zoo = write_tiny_zoo(workdir / "tiny_zoo", layout="official")
        return SonicPipeline.from_pretrained(zoo, device=device, dtype=dtype, memory_policy=policy,
                                             face_detector=False, interpolation=settings.interpolate,
                                             devices=settings.devices)
    from .random_models import build_random_models

    # Create the weights where they rest under the policy (the pipeline moves the UNet for lowvram).
    where = device if policy == "keep" else torch.device("cpu")
    models = build_random_models(device=where, dtype=dtype, seed=settings.seed, interpolation=settings.interpolate)
    return SonicPipeline(models, device=device, dtype=dtype, memory_policy=policy, devices=settings.devices)


def run_once(pipe, settings: BenchSettings, image, face_box, wave: np.ndarray, steps: int, video_path: Path,
             device: torch.device) -> dict[str, Any]:
    """One generation with per-stage timing; returns the run's record."""
    from ..finishing.tail import finish
    from ..media.video import write_mp4

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

    decoded = TimedIterator(pipe.decode_iter(latents, decode_chunk_size=settings.decode_chunk_size,
                                             callback=on_progress))
    # The product's tail (RIFE, last frame held, soundtrack), streamed into the MP4 writer.
    stream = finish(pipe, job, decoded, interpolate=settings.interpolate, callback=on_progress)
    last = TimedIterator(stream.frames)
    output_frames = stream.num_frames
    start = time.perf_counter()
    if not pipe.executor.is_main:  # another torchrun rank: its share of the decode, no MP4
        for _ in last:
            pass
    else:
        write_mp4(video_path, last, fps=stream.fps, audio=stream.audio, sample_rate=stream.sample_rate,
                  preset=settings.x264_preset, overwrite=True, metadata={"benchmark": True})
    chain = time.perf_counter() - start
    clock.add("decode", decoded.seconds)
    if settings.interpolate:
        clock.add("interpolation", last.seconds - decoded.seconds)
    clock.add("encode_mux", chain - last.seconds)
    if last.frames != output_frames:
        raise RuntimeError(f"the streamed chain produced {last.frames} frames, expected {output_frames}")

    stages = {name: clock.seconds.get(name, 0.0) for name in STAGES}
    total = sum(stages.values())
    video_seconds = stream.seconds
    calls = max(len(window_seconds), 1)
    return {
        "stages": stages, "total_seconds": total, "video_seconds": video_seconds, "output_frames": output_frames,
        "generated_frames": job.timeline.generated_frames, "fps": stream.fps, "steps": steps,
        "unet_calls": len(window_seconds),
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
def bench_device(settings: BenchSettings) -> torch.device:
    """The main device: torchrun's rank device, the first of --devices, or --device."""
    from ..devices import resolve_device
    from ..devices import launched_by_torchrun
    from ..diffusion.executors import parse_devices

    if launched_by_torchrun():
        from ..diffusion.executors import executor_for

        return executor_for().main_device
    if settings.devices:
        return parse_devices(settings.devices)[0]
    return resolve_device(None if settings.device == "auto" else settings.device)


def run_benchmark(settings: BenchSettings, *, log=print) -> dict[str, Any]:
    """Run the benchmark described by `settings`; returns the JSON report (also written to json_path)."""
    from ..devices import resolve_dtype

    settings = settings.validate()
    if settings.flops_only:
        return flops_report(settings, log=log)
    device = bench_device(settings)
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
                keep_copy(video, Path(settings.keep_video).expanduser(), overwrite=settings.overwrite)
    finally:
        torch.set_num_threads(previous_threads)

    report = summarize(settings, runs, warmups=warmups, flops=flops, peak_tflops=peak_tflops, device=device,
                       device_name=device_name, dtype=dtype, size=size, setup_seconds=setup_seconds,
                       host_peak=host.peak, host_start=host.start_bytes)
    if pipe.executor.num_workers > 1 or settings.baseline:
        from .bench_spread import spread_record

        report["spread"] = spread_record(pipe.executor, report, settings.baseline, pipe.config)
    report["rank"] = pipe.executor.rank
    if pipe.executor.is_main:
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
    if report.get("spread"):
        from .bench_spread import format_spread

        lines.append(format_spread(report["spread"]))
    return "\n".join(lines)


def keep_copy(video: Path, target: Path, *, overwrite: bool) -> Path:
    """Copy the measured video to `target`, never replacing a file unless `overwrite`."""
    import shutil

    from ..files import Scratch, publish

    with Scratch(target.parent) as scratch:
        shutil.copyfile(video, scratch.path("kept.mp4"))
        return publish(scratch.path("kept.mp4"), target, overwrite=overwrite)
