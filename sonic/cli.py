"""`python -m sonic`: generate, doctor, convert, check-sync, queue, bench, make-tiny-zoo.

Errors a user can fix print one line (`error: ...`) and exit with status 2; `--debug` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from . import __version__
from .errors import SonicError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    argv = _attach_negative_values(list(sys.argv[1:] if argv is None else argv), ("--face-box", "--sync"))
    _stop_on_sigterm()
    # Sub-commands owned by other modules parse their own arguments.
    delegated = {"check-sync": ("sonic.sync", "check_sync_command"),
                 "queue": ("sonic.comfy_client", "queue_command"),
                 "bench": ("sonic.bench", "bench_command")}
    if argv and argv[0] in delegated:
        module_name, func_name = delegated[argv[0]]
        import importlib

        command = getattr(importlib.import_module(module_name), func_name)
        return guarded(lambda: command([a for a in argv[1:] if a != "--debug"]), debug="--debug" in argv)

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USER_ERROR
    return guarded(lambda: args.run(args), debug=args.debug)


def guarded(run, *, debug: bool) -> int:
    """Run a command; a `SonicError` becomes one `error:` line and exit status 2."""
    try:
        return run()
    except SonicError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted: no output was written", file=sys.stderr)
        return EXIT_INTERRUPTED


def _attach_negative_values(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """`--face-box -5,0,90,100` would read "-5,..." as an option: glue such values on with `=`."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in options and i + 1 < len(argv) and argv[i + 1].startswith("-") and argv[i + 1][1:2].isdigit():
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _stop_on_sigterm() -> None:
    """`kill`/`timeout` send SIGTERM: stop like Ctrl-C so partial outputs are removed."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sonic", description=f"Sonic talking heads {__version__}")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    gen = sub.add_parser("generate", help="portrait + audio -> lip-synced MP4")
    gen.add_argument("--models", required=True, help="weights folder (official checkpoints/ or ComfyUI models/)")
    gen.add_argument("--image", required=True, help="portrait image (PNG/JPEG/WebP/BMP)")
    gen.add_argument("--audio", required=True, help="speech audio (WAV/MP3/FLAC/OGG/Opus/M4A)")
    gen.add_argument("--out", required=True, help="output .mp4 path")
    gen.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    gen.add_argument("--svd-checkpoint", help="SVD-xt single file (svd_xt.safetensors) instead of the diffusers folder")
    gen.add_argument("--face-box", help="X1,Y1,X2,Y2 in image pixels (skips detection), or 'full' for the whole image")
    gen.add_argument("--face-index", type=int, help="which detected face to use, 0 = leftmost (default: largest)")
    gen.add_argument("--no-crop", action="store_true", help="keep the whole picture instead of a square face crop")
    gen.add_argument("--expand-ratio", type=float, help="crop margin around the face (default 0.5)")
    gen.add_argument("--min-resolution", type=int, help="short side of the model input in px (default 512)")
    gen.add_argument("--max-image-pixels", type=int,
                     help="refuse input pictures with more pixels than this (default 40000000 = 40 MP)")
    gen.add_argument("--duration", type=float, help="seconds of audio to use (default: all)")
    gen.add_argument("--steps", type=int, help="denoising steps (default 25)")
    gen.add_argument("--seed", type=int, help="random seed (default 72589, the official one)")
    gen.add_argument("--dynamic-scale", type=float, help="motion and expression strength (default 1.0)")
    gen.add_argument("--motion-scale", type=float, help="extra head-motion strength (default 1.0)")
    gen.add_argument("--i2i-noise-strength", type=float, help="fraction of the schedule to run (default 1.0)")
    gen.add_argument("--decode-chunk-size", type=int, help="frames per VAE decode call (default 8)")
    gen.add_argument("--no-interpolate", action="store_true", help="skip RIFE: 12.5 fps output")
    gen.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: best available)")
    gen.add_argument("--dtype", default="auto", help="auto, fp32, bf16 or fp16 (default auto)")
    gen.add_argument("--memory-policy", default="keep", choices=["keep", "offload", "lowvram"],
                     help="keep models on the GPU, offload between stages, or low-VRAM")
    gen.add_argument("--compile", action="store_true",
                     help="torch.compile the UNet (faster sampling on GPUs after a one-off compile)")
    gen.add_argument("--crf", type=int, default=18, help="H.264 quality, lower is better (default 18)")
    gen.add_argument("--preset", default="medium", help="x264 preset (default medium)")
    post = gen.add_argument_group("post-processing")
    post.add_argument("--sync", default="off", help="lip-sync calibration: off, auto, or an offset in ms")
    post.add_argument("--smooth", type=float, default=0.0, help="motion smoothing strength, 0 = off")
    post.add_argument("--color-match", action="store_true", help="keep face colours on the reference")
    post.add_argument("--paste-back", action="store_true", help="composite the face crop back into the photo")
    post.add_argument("--output-fps", type=float, help="convert the frame rate (e.g. 24, 30, 60)")
    gen.add_argument("--quiet", action="store_true", help="no progress bars")
    gen.set_defaults(run=run_generate)

    doctor = sub.add_parser("doctor", help="check a weights folder and say what is missing or wrong")
    doctor.add_argument("--models", required=True)
    doctor.add_argument("--svd-checkpoint")
    doctor.set_defaults(run=run_doctor)

    convert = sub.add_parser("convert", help="rewrite .pth/.pkl weights as .safetensors twins (verified)")
    convert.add_argument("--models", required=True)
    convert.add_argument("--trust-pickles", action="store_true",
                         help="also convert pickles that need Python classes (runs their code: only in a sandbox, "
                              "only for files you trust)")
    convert.set_defaults(run=run_convert)

    zoo = sub.add_parser("make-tiny-zoo", help="write a tiny random-weight model folder (for trying the tools)")
    zoo.add_argument("dest")
    zoo.add_argument("--layout", default="official", choices=["official", "comfyui"])
    zoo.add_argument("--svd-single-file", action="store_true",
                     help="put the SVD VAE + CLIP in checkpoints/svd_xt.safetensors (original layout)")
    zoo.set_defaults(run=run_make_zoo)

    for p in (gen, doctor, convert, zoo):
        p.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.set_defaults(debug=False)
    return parser


# ------------------------------------------------------------------------------- generate
def run_generate(args) -> int:
    from .audio import load_audio
    from .config import SonicConfig
    from .face import load_image
    from .video import check_encoder_settings, check_output_path
    from .weights import find_model_files

    # Everything that can be checked cheaply is checked before any model loads.
    out_path = check_output_path(args.out, args.overwrite)
    check_encoder_settings(args.crf, args.preset)
    face_box = parse_face_box(args.face_box) if args.face_box else None
    postprocess = postprocess_options(args)
    config = SonicConfig().replace(**{k: v for k, v in dict(
        crop=False if args.no_crop else None, expand_ratio=args.expand_ratio, min_resolution=args.min_resolution,
        inference_steps=args.steps, dynamic_scale=args.dynamic_scale, motion_scale=args.motion_scale,
        i2i_noise_strength=args.i2i_noise_strength, seed=args.seed, interpolate=not args.no_interpolate,
        decode_chunk_size=args.decode_chunk_size, max_image_pixels=args.max_image_pixels).items() if v is not None})
    find_model_files(args.models, need_interpolation=config.interpolate, svd_checkpoint=args.svd_checkpoint,
                     need_face_detector=False)
    audio = load_audio(args.audio, duration=args.duration)
    check_sync_measurable(postprocess, audio.seconds)
    image = load_image(args.image, max_image_pixels=config.max_image_pixels, limit_name="--max-image-pixels")

    import torch

    from .pipeline import SonicPipeline
    from .video import write_mp4

    started = time.perf_counter()
    from .commands.progress import StageProgress

    progress = StageProgress(enabled=not args.quiet, stages=("conditioning", "sampling", "decode")
                             + (("interpolate",) if config.interpolate else ()))
    pipe = SonicPipeline.from_pretrained(args.models, device=args.device, dtype=args.dtype,
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
        write_mp4(out_path, out.frames, fps=out.fps, audio=out.audio, sample_rate=out.sample_rate, crf=args.crf,
                  preset=args.preset, metadata=metadata, overwrite=args.overwrite)
    finally:
        progress.close()
    num_frames = out.frames.shape[0] if isinstance(out.frames, torch.Tensor) else out.timeline.output_frames(
        out.config.interpolate)
    width, height = out.job.portrait.width, out.job.portrait.height
    seconds = time.perf_counter() - started
    peak = peak_memory_summary(torch, pipe.device)
    if isinstance(out.frames, torch.Tensor):
        height, width = out.frames.shape[1:3]
    print(f"wrote {out_path}: {num_frames} frames at {out.fps:g} fps = {num_frames / out.fps:.2f} s of video, "
          f"{width}x{height} px, in {seconds:.1f} s ({peak})")
    for line in postprocess_summary(out.report.get("postprocess") or {}):
        print(line)
    return 0


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


def parse_face_box(text: str):
    from .errors import ParameterError

    if text.strip().lower() == "full":
        return "full"
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ParameterError(f"--face-box must be X1,Y1,X2,Y2 (four numbers) or 'full', got {text!r}")
    return values


def postprocess_options(args):
    """PostProcessOptions from the CLI flags, or None when every option is off."""
    sync = args.sync.strip().lower()
    if sync == "off" and not args.smooth and not args.color_match and not args.paste_back and args.output_fps is None:
        return None
    from .errors import ParameterError
    from .postprocess import PostProcessOptions

    if sync not in ("off", "auto"):
        try:
            sync = float(sync)
        except ValueError:
            raise ParameterError(f"--sync must be off, auto or a number of milliseconds, got {args.sync!r}") from None
    return PostProcessOptions(sync=sync, smoothing=args.smooth, colour_match=args.color_match,
                              paste_back=args.paste_back, output_fps=args.output_fps)


def check_sync_measurable(postprocess, seconds: float) -> None:
    """`--sync auto` measures the offset on the finished clip: refuse a too-short one before generating."""
    from .sync import MIN_SECONDS

    if postprocess is not None and postprocess.sync == "auto" and seconds < MIN_SECONDS:
        from .errors import ParameterError

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
        from .video import sha256_file

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


# ------------------------------------------------------------------------------- weights
def run_doctor(args) -> int:
    from .loading import doctor_report

    ok, lines = doctor_report(args.models, svd_checkpoint=args.svd_checkpoint)
    for line in lines:
        print(line)
    return 0 if ok else 1


def run_convert(args) -> int:
    from .weights import convert_checkpoints

    written = convert_checkpoints(args.models, trust_pickles=args.trust_pickles)
    for path in written:
        print(f"ok {path}")
    if not written:
        print("nothing to convert: no .pth/.pkl/.bin weights without a verified .safetensors twin")
    return 0


def run_make_zoo(args) -> int:
    from .zoo import write_tiny_zoo

    path = write_tiny_zoo(args.dest, layout=args.layout, svd_single_file=args.svd_single_file)
    print(f"tiny random-weight models written to {path} (for trying the tools; the videos are noise)")
    return 0
