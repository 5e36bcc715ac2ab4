"""`python -m sonic generate`: portrait + audio -> lip-synced MP4 (the main job)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from ..placement import MEMORY_POLICIES, describe_policies

HELP = "portrait + audio -> lip-synced MP4"


def add_arguments(parser) -> None:
    parser.add_argument("--models", help="weights folder (official checkpoints/ or ComfyUI models/); default: "
                                         "$SONIC_MODELS or the folder `python -m sonic download` fills")
    parser.add_argument("--image", required=True, help="portrait image (PNG/JPEG/WebP/BMP)")
    parser.add_argument("--audio", required=True, help="speech audio (WAV/MP3/FLAC/OGG/Opus/M4A)")
    parser.add_argument("--out", required=True, help="output .mp4 path")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: best available)")
    parser.add_argument("--devices", help="spread the windows of every step over several devices, e.g. cuda:0,cuda:1 "
                        "or 'all' (same result as one device; under torchrun each process takes its own)")
    add_model_options(parser)
    add_job_options(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_model_options(parser) -> None:
    """Options of the models (the same for every job of a batch)."""
    parser.add_argument("--svd-checkpoint", help="SVD-xt single file (svd_xt.safetensors) instead of the diffusers folder")
    parser.add_argument("--dtype", default="auto", help="auto, fp32, bf16 or fp16 (default auto)")
    parser.add_argument("--memory-policy", default="keep", choices=MEMORY_POLICIES, help=describe_policies())
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the UNet (faster sampling on GPUs after a one-off compile)")


def add_job_options(parser) -> None:
    """Options of one clip (`batch` takes them per manifest row too)."""
    parser.add_argument("--face-box", help="X1,Y1,X2,Y2 in image pixels (skips detection), or 'full' for the whole image")
    parser.add_argument("--face-index", type=int, help="which detected face to use, 0 = leftmost (default: largest)")
    parser.add_argument("--no-crop", action="store_true", help="keep the whole picture instead of a square face crop")
    parser.add_argument("--expand-ratio", type=float, help="crop margin around the face (default 0.5)")
    parser.add_argument("--min-resolution", type=int, help="short side of the model input in px (default 512)")
    parser.add_argument("--max-image-pixels", type=int,
                        help="refuse input pictures with more pixels than this (default 40000000 = 40 MP)")
    parser.add_argument("--duration", type=float, help="seconds of audio to use (default: all)")
    parser.add_argument("--max-audio-seconds", type=float,
                        help="refuse longer audio unless --duration takes its start (default 7200 = 2 hours)")
    parser.add_argument("--steps", type=int, help="denoising steps (default 25)")
    parser.add_argument("--seed", type=int, help="random seed (default 72589, the official one)")
    parser.add_argument("--dynamic-scale", type=float, help="motion and expression strength (default 1.0)")
    parser.add_argument("--motion-scale", type=float, help="extra head-motion strength (default 1.0)")
    parser.add_argument("--i2i-noise-strength", type=float, help="fraction of the schedule to run (default 1.0)")
    parser.add_argument("--decode-chunk-size", type=int, help="frames per VAE decode call (default 8)")
    parser.add_argument("--no-interpolate", action="store_true", help="skip RIFE: 12.5 fps output")
    parser.add_argument("--sampler", choices=["euler", "dpmpp_2m"],
                        help="integrator: euler (default, the official one) or dpmpp_2m (DPM-Solver++(2M), opt-in)")
    parser.add_argument("--crf", type=int, default=18, help="H.264 quality, lower is better (default 18)")
    parser.add_argument("--preset", default="medium", help="x264 preset (default medium)")
    post = parser.add_argument_group("post-processing")
    post.add_argument("--sync", default="off", help="lip-sync calibration: off, auto, or an offset in ms")
    post.add_argument("--smooth", type=float, default=0.0, help="motion smoothing strength, 0 = off")
    post.add_argument("--color-match", action="store_true", help="keep face colours on the reference")
    post.add_argument("--paste-back", action="store_true", help="composite the face crop back into the photo")
    post.add_argument("--output-fps", type=float, help="convert the frame rate (e.g. 24, 30, 60)")


def run(args) -> int:
    from ..inputs.audio import load_audio
    from ..inputs.face_box import check_inside, parse_face_box
    from ..inputs.image import load_image
    from ..media.video import check_encoder_settings, check_output_path
    from ..weights import find_model_files
    from ..weights.locate import default_models_dir

    args.models = args.models or str(default_models_dir())
    # Everything that can be checked cheaply is checked before any model loads.
    out_path = check_output_path(args.out, args.overwrite)
    check_encoder_settings(args.crf, args.preset)
    face_box = parse_face_box(args.face_box)
    if args.devices:
        from ..diffusion.executors import parse_devices

        parse_devices(args.devices)  # a device that does not exist is named before anything loads
    postprocess = postprocess_options(args)
    config = config_from_args(args)
    check_face_choice(face_box, args.face_index)
    # Which files are missing (only looked up, none is read: a new user hears first what to download).
    find_model_files(args.models, need_interpolation=config.interpolate, svd_checkpoint=args.svd_checkpoint,
                     need_face_detector=False)
    audio = load_audio(args.audio, duration=args.duration, max_seconds=config.max_audio_seconds)
    check_sync_measurable(postprocess, audio.seconds)
    image = load_image(args.image, max_image_pixels=config.max_image_pixels, limit_name="--max-image-pixels")
    check_inside(face_box, image.shape[1], image.shape[0])

    import torch

    from ..diffusion.executors import executor_for, window_spread_summary
    from ..media.video import write_mp4
    from ..pipeline import SonicPipeline

    started = time.perf_counter()
    executor = executor_for(args.devices, args.device)  # torchrun's ranks, threads over --devices, or one device
    if not executor.is_main:  # another rank of a torchrun job: compute its share, rank 0 writes and reports
        return run_helper_rank(args, executor, config, image, audio, face_box, postprocess)
    from .progress import StageProgress

    progress = StageProgress(enabled=not args.quiet, stages=("conditioning", "sampling", "decode")
                             + (("interpolate",) if config.interpolate else ()))
    pipe = SonicPipeline.from_pretrained(args.models, devices=executor, dtype=args.dtype,
                                         memory_policy=args.memory_policy, svd_checkpoint=args.svd_checkpoint,
                                         face_detector="auto" if face_box is None else False,
                                         interpolation=config.interpolate, config=config)
    if args.compile:
        pipe.models.unet.compile()
    settings = dict(face_box=face_box, face_index=args.face_index, callback=progress)
    try:
        # Without post-processing the frames stream from the decoder into the encoder.
        out = pipe(image, audio, postprocess=postprocess, **settings) if postprocess \
            else pipe.stream(image, audio, **settings)
        metadata = provenance(args.image, args.audio, out.config, extra=out.report)
        write_mp4(out_path, checked_at_end(out.frames, executor), fps=out.fps, audio=out.audio,
                  sample_rate=out.sample_rate, crf=args.crf, preset=args.preset, metadata=metadata,
                  overwrite=args.overwrite)
    finally:
        progress.close()
    # Paste-back makes the frames the input picture's size; otherwise they are the model's.
    height, width = out.frames.shape[1:3] if postprocess else (out.job.portrait.height, out.job.portrait.width)
    seconds = time.perf_counter() - started
    peak = peak_memory_summary(torch, pipe.device)
    print(f"wrote {out_path}: {out.num_frames} frames at {out.fps:g} fps = {out.seconds:.2f} s of video, "
          f"{width}x{height} px, in {seconds:.1f} s ({peak})")
    if executor.num_workers > 1:
        print(f"spread: {window_spread_summary(executor, out.timeline.generated_frames, out.config)}")
    for line in postprocess_summary(out.report.get("postprocess") or {}):
        print(line)
    executor.close()
    return 0


def run_helper_rank(args, executor, config, image, audio, face_box, postprocess) -> int:
    """A rank other than 0 runs the same job (its share of every collective stage) and writes nothing."""
    from ..pipeline import SonicPipeline

    pipe = SonicPipeline.from_pretrained(args.models, devices=executor, dtype=args.dtype,
                                         memory_policy=args.memory_policy, svd_checkpoint=args.svd_checkpoint,
                                         face_detector="auto" if face_box is None else False,
                                         interpolation=config.interpolate, config=config)
    settings = dict(face_box=face_box, face_index=args.face_index)
    out = pipe(image, audio, postprocess=postprocess, **settings) if postprocess else pipe.stream(image, audio, **settings)
    for _ in checked_at_end(out.frames, executor):  # the decode chunks are spread over the ranks: take part
        pass
    executor.close()
    return 0


def checked_at_end(frames, executor):
    """The frames, then a check for a cancel that arrived during the last exchange of the ranks
    (before the MP4 is published): streamed frames are checked after the last chunk."""
    if not hasattr(frames, "__next__"):
        executor.raise_if_cancelled()
        return frames

    def stream():
        yield from frames
        executor.raise_if_cancelled()

    return stream()


def config_from_args(args):
    """The `SonicConfig` of the job options (`add_job_options`); checks every value's range."""
    from ..config import SonicConfig

    return SonicConfig().replace(**{k: v for k, v in dict(
        crop=False if args.no_crop else None, expand_ratio=args.expand_ratio, min_resolution=args.min_resolution,
        inference_steps=args.steps, dynamic_scale=args.dynamic_scale, motion_scale=args.motion_scale,
        i2i_noise_strength=args.i2i_noise_strength, seed=args.seed, interpolate=not args.no_interpolate,
        decode_chunk_size=args.decode_chunk_size, max_image_pixels=args.max_image_pixels,
        max_audio_seconds=args.max_audio_seconds, sampler=args.sampler).items() if v is not None})


def postprocess_summary(report: dict) -> list[str]:
    """Lines saying what post-processing did (the same facts go into the MP4's tag)."""
    lines = []
    sync = report.get("sync")
    if sync is not None:
        lines.append(sync_summary(sync))
    return lines


def sync_summary(entry: dict) -> str:
    """One line on lip-sync calibration: the shift applied, or why none was."""
    shift = float(entry.get("applied_shift_ms", 0.0))
    if entry.get("mode") == "manual":
        return f"sync: soundtrack shifted by {shift:+.0f} ms (given with --sync)"
    measured = f"measured mouth offset {entry['measured_offset_ms']:+.0f} ms, confidence {entry['confidence']:g}"
    if "note" in entry:
        return f"sync: {entry['note']}; {measured}"
    return f"sync: soundtrack shifted by {shift:+.0f} ms ({measured})"


def check_face_choice(face_box, face_index) -> None:
    """--face-index must be a face number, and not given together with --face-box."""
    if face_index is None:
        return
    from ..errors import ParameterError

    if face_box is not None:
        raise ParameterError("give either --face-box or --face-index, not both")
    if face_index < 0:
        raise ParameterError(f"--face-index counts faces from the left starting at 0, got {face_index}")


def postprocess_options(args):
    """PostProcessOptions from the CLI flags, or None when every option is off."""
    sync = args.sync.strip().lower()
    if sync == "off" and not args.smooth and not args.color_match and not args.paste_back and args.output_fps is None:
        return None
    from ..errors import ParameterError
    from ..finishing.postprocess import PostProcessOptions

    if sync not in ("off", "auto"):
        try:
            sync = float(sync)
        except ValueError:
            raise ParameterError(f"--sync must be off, auto or a number of milliseconds, got {args.sync!r}") from None
    return PostProcessOptions(sync=sync, smoothing=args.smooth, colour_match=args.color_match,
                              paste_back=args.paste_back, output_fps=args.output_fps)


def check_sync_measurable(postprocess, seconds: float) -> None:
    """`--sync auto` measures the offset on the finished clip: refuse a too-short one before generating."""
    from ..sync.measure import MIN_SECONDS

    if postprocess is not None and postprocess.sync == "auto" and seconds < MIN_SECONDS:
        from ..errors import ParameterError

        raise ParameterError(f"--sync auto needs at least {MIN_SECONDS:g} s of audio to measure the lip-sync offset, "
                             f"this clip lasts {seconds:.2f} s; use --sync off, or give the offset in ms (--sync 40)")


def provenance(image, audio, config, extra=None) -> dict:
    """What the MP4's Sonic tag records besides the AI-generated notice (added by write_mp4):
    the settings and the SHA-256 of the input image and audio, so any output can be traced."""
    import dataclasses

    record = {"parameters": dataclasses.asdict(config), "image_sha256": sha256_of(image),
              "audio_sha256": sha256_of(audio)}
    if extra and "postprocess" in extra:
        record["postprocess"] = json.loads(json.dumps(extra["postprocess"], default=str))
    return record


def sha256_of(source) -> str:
    """SHA-256 of a file, or of an array's/tensor's bytes."""
    if isinstance(source, (str, Path)) and Path(source).is_file():
        from ..media.video import sha256_file

        return sha256_file(source)
    import numpy as np

    if isinstance(source, dict):
        source = source.get("waveform")
    if isinstance(source, tuple):
        source = source[0]
    if hasattr(source, "detach"):
        source = source.detach().cpu().numpy()
    return hashlib.sha256(np.ascontiguousarray(np.asarray(source)).tobytes()).hexdigest()


def peak_memory_summary(torch, device) -> str:
    import resource

    host_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    text = f"peak host memory {host_gb:.2f} GB"
    if device.type == "cuda":
        text += f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 1024 ** 3:.2f} GB"
    return text
