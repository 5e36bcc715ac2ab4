"""Writing the final MP4: H.264 yuv420p video + AAC audio, exact durations, atomic output.

What this fixes compared with the official writer (SPEC section 8): frames are rounded, not
truncated, to 8 bits; the video is encoded once (not crf 25 and then crf 18 again); the
audio is trimmed or padded to exactly `frames / fps` seconds instead of relying on
`-shortest`; ffmpeg runs from an argument list (no shell) and its failures are errors, with
the last lines of its log; and a half-written file never appears under the final name.

Odd sizes: H.264 in yuv420p needs even width and height, and ffmpeg otherwise writes
nothing without complaint (DEPENDENCIES.md). We **crop** the last row and/or column
(`width // 2 * 2`, like the official `keep_resolution`), never pad: no invented pixels, and
the rest of the frame keeps its exact coordinates.

Memory: frames may be one tensor or an iterator of `[t, H, W, 3]` chunks; each chunk is
converted to 8 bits and piped into ffmpeg before the next is requested, so a long video is
never held in memory here.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from ..errors import OutputError, ParameterError
from ..files import Scratch, check_output_name, publish
from .children import popen, run as run_child
from .probe import SONIC_TAG_KEY, tail_lines, ffmpeg_exe, fraction_fps, probe

AI_NOTICE = "AI-generated video (synthetic talking head), made with Sonic for ComfyUI"
# x264 presets, fastest to slowest; anything else is refused before encoding starts.
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


def write_mp4(path, frames, *, fps: float, audio: np.ndarray | None = None, sample_rate: int | None = None,
              crf: int = 18, preset: str = "medium", metadata: dict | None = None, tags: dict | None = None,
              overwrite: bool = False) -> Path:
    """Encode frames (and audio) into an MP4 at `path`; return the path.

    frames: float `[T, H, W, 3]` in [0, 1] (ComfyUI IMAGE layout; uint8 also accepted), a
        numpy array of the same, or an iterator of such chunks (streamed, never all in memory).
    fps: output frame rate (frames per second).
    audio: float32 `[C, S]` (or `[S]`) waveform in [-1, 1] at `sample_rate` Hz; it is
        trimmed or padded with silence to exactly `frame_count / fps` seconds.
    crf / preset: x264 quality (0-51, lower is better; 18 is visually lossless) and speed.
    metadata: what to record in the file, e.g. `{"parameters": {...}, "image_sha256": ...,
        "audio_sha256": ...}`; the `comment` tag always says the video is AI-generated and
        names the tool and version (see `build_metadata_tags`).
    tags: further container tags, each under its own key, as ComfyUI's SaveVideo writes
        `prompt` and `workflow` (its frontend reopens a graph from those keys); values that are
        not strings are stored as JSON.
    overwrite: replace an existing file; otherwise an existing `path` raises `OutputError`.

    The file is written in a per-run hidden scratch folder beside `path` (`sonic.files.Scratch`)
    and published only when ffmpeg succeeded and the result has the expected frame count, size
    and durations: hard-linked to `path`, which fails if `path` appeared meanwhile (another run),
    unless `overwrite`. On any error or interruption no file is left at `path` and the scratch
    folder is removed; one left by a killed run is removed by the next write into that folder.
    """
    path = check_output_path(path, overwrite)
    fps = _check_fps(fps)
    check_encoder_settings(crf, preset)
    if audio is not None:
        audio = _check_audio(audio, sample_rate)
    extra = own_tags(tags)
    tags = {**build_metadata_tags(metadata), **extra}
    # +faststart: moov atom first (streams in browsers). use_metadata_tags stores keys beyond the few
    # standard ones (ComfyUI's prompt/workflow) and moves the standard ones with them: only when needed.
    movflags = "+faststart+use_metadata_tags" if extra else "+faststart"

    with Scratch(path.parent) as scratch:
        video_tmp, final_tmp, meta_tmp = scratch.path("video.mp4"), scratch.path("final.mp4"), scratch.path("meta.txt")
        write_ffmetadata(meta_tmp, tags)
        target = video_tmp if audio is not None else final_tmp
        frame_count, width, height = _encode_video(target, _chunks(frames), fps=fps, crf=crf, preset=preset,
                                                   tags=meta_tmp if audio is None else None, movflags=movflags)
        if audio is not None:
            wav_tmp = scratch.path("audio.wav")
            _write_wav(wav_tmp, fit_audio_length(audio, sample_rate, frame_count / fps), sample_rate)
            _mux(video_tmp, wav_tmp, final_tmp, meta_tmp, movflags)
        _verify(final_tmp, frame_count=frame_count, width=width, height=height, fps=fps,
                has_audio=audio is not None)
        publish(final_tmp, path, overwrite=overwrite)
    return path


# --------------------------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------------------------

def build_metadata_tags(metadata: dict | None) -> dict[str, str]:
    """Container tags for a Sonic output.

    `comment` holds one JSON object: `{"ai_generated": true, "notice": ..., "tool": "sonic",
    "version": ..., **metadata}` (the caller's keys, e.g. `parameters`, `image_sha256`,
    `audio_sha256`, must be JSON-serialisable). `description` repeats the notice in words for
    players that show it. Read it back with `sonic.media.probe.read_sonic_tags`.
    """
    from .. import __version__

    metadata = dict(metadata or {})
    record = {"ai_generated": True, "notice": AI_NOTICE, "tool": "sonic", "version": __version__}
    for key, value in metadata.items():
        if key in record:
            raise ParameterError(f"metadata key {key!r} is reserved; use another name")
        record[str(key)] = value
    try:
        comment = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"metadata must be JSON-serialisable (str, numbers, lists, dicts): {exc}") from exc
    return {SONIC_TAG_KEY: comment, "description": f"{AI_NOTICE} {__version__}"}


# Tags from `build_metadata_tags`; `own_tags` refuses them so the provenance cannot be overwritten.
PROVENANCE_KEYS = (SONIC_TAG_KEY, "description")


def is_tag_name(key) -> bool:
    """A key `write_mp4(tags=...)` accepts: a plain word that is not one of the provenance tags."""
    return (isinstance(key, str) and bool(key) and key not in PROVENANCE_KEYS
            and all(c.isalnum() or c in "_-." for c in key))


def own_tags(tags: dict | None) -> dict[str, str]:
    """Caller tags as strings (JSON for anything else); keys are plain words."""
    result = {}
    for key, value in (tags or {}).items():
        if not is_tag_name(key):
            raise ParameterError(f"tag names must be letters, digits, '_', '-' or '.' and not one of "
                                 f"{PROVENANCE_KEYS} (written by Sonic itself), got {key!r}")
        try:
            result[key] = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"),
                                                                          allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ParameterError(f"tag {key!r} must be a string or JSON-serialisable: {exc}") from exc
    return result


def write_ffmetadata(path: Path, tags: dict[str, str]) -> None:
    """Tags as an ffmpeg metadata file: no command-line length limit for a large workflow."""
    def escape(text: str) -> str:
        for special in ("\\", "=", ";", "#", "\n"):
            text = text.replace(special, "\\" + special)
        return text

    lines = [";FFMETADATA1"] + [f"{escape(k)}={escape(v)}" for k, v in tags.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def sha256_file(path, *, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (for the `image_sha256` / `audio_sha256` tags)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------

def check_output_path(path, overwrite: bool = False) -> Path:
    """Refuse an output path that cannot be written, before any work (`OutputError`)."""
    path = check_output_name(path)
    if path.suffix.lower() != ".mp4":
        raise OutputError(f"the output {str(path)!r} must end in .mp4 (an H.264 + AAC MP4 is written)")
    if path.exists() and not path.is_file():
        raise OutputError(f"{str(path)!r} exists and is not a file (a folder?); choose another output name")
    if path.exists() and not overwrite:
        raise OutputError(f"{str(path)!r} already exists; choose another name or pass overwrite=True "
                          f"(CLI: --overwrite)")
    if not path.parent.is_dir():
        what = "is a file, not a folder" if path.parent.exists() else "does not exist"
        raise OutputError(f"output folder {str(path.parent)!r} {what}; create the folder first")
    if not os.access(path.parent, os.W_OK):
        raise OutputError(f"output folder {str(path.parent)!r} is not writable; choose another folder")
    return path


def check_encoder_settings(crf, preset) -> None:
    """Refuse x264 settings ffmpeg would reject, before any work (`ParameterError`)."""
    if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 51:
        raise ParameterError(f"crf must be an integer between 0 and 51 (lower = better quality), got {crf!r}")
    if preset not in X264_PRESETS:
        raise ParameterError(f"preset must be one of {', '.join(X264_PRESETS)}, got {preset!r}")


def _check_fps(fps) -> float:
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise ParameterError(f"fps must be a number of frames per second, got {fps!r}") from None
    if not (np.isfinite(value) and 0 < value <= 240):
        raise ParameterError(f"fps must be in (0, 240] frames per second, got {fps!r}")
    return value


def _check_audio(audio, sample_rate) -> np.ndarray:
    if sample_rate is None or not isinstance(sample_rate, (int, np.integer)) or not 1000 <= sample_rate <= 384_000:
        raise ParameterError(f"sample_rate must be an integer number of Hz (1000-384000) when audio is given, got {sample_rate!r}")
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().float().numpy()
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2 or not 1 <= audio.shape[0] <= 8:
        raise ParameterError(f"audio must be [channels, samples] with 1-8 channels, got shape {tuple(audio.shape)}")
    if not np.isfinite(audio).all():
        raise ParameterError("audio contains NaN or infinite samples; check the audio source")
    return audio


def fit_audio_length(audio: np.ndarray, sample_rate: int, seconds: float) -> np.ndarray:
    """Trim, or pad with silence at the end, to exactly `round(seconds * sample_rate)` samples."""
    target = int(round(seconds * sample_rate))
    if audio.shape[1] >= target:
        return audio[:, :target]
    return np.pad(audio, ((0, 0), (0, target - audio.shape[1])))


# --------------------------------------------------------------------------------------------
# frames
# --------------------------------------------------------------------------------------------

def _chunks(frames) -> Iterator[np.ndarray]:
    """uint8 `[t, H, W, 3]` numpy chunks from a tensor, an array or an iterator of either."""
    if isinstance(frames, (torch.Tensor, np.ndarray)):
        frames = [frames]
    elif not isinstance(frames, Iterable):
        raise ParameterError(f"frames must be a tensor/array [T, H, W, 3] or an iterator of them, got {type(frames).__name__}")
    for chunk in frames:
        yield to_uint8_frames(chunk)


def to_uint8_frames(chunk) -> np.ndarray:
    """One chunk as uint8 `[t, H, W, 3]`: float [0, 1] is clamped and *rounded* (the official
    writer truncates, which darkens every frame by half a level on average)."""
    if isinstance(chunk, np.ndarray):
        chunk = torch.from_numpy(chunk)
    if not isinstance(chunk, torch.Tensor):
        raise ParameterError(f"each frame chunk must be a tensor or array, got {type(chunk).__name__}")
    if chunk.ndim == 3:
        chunk = chunk[None]
    if chunk.ndim != 4 or chunk.shape[-1] != 3:
        raise ParameterError(f"frames must be [T, H, W, 3] (RGB, channels last), got shape {tuple(chunk.shape)}")
    if chunk.dtype == torch.uint8:
        return chunk.cpu().numpy()
    chunk = chunk.detach().cpu().float()
    if torch.isnan(chunk).any():
        raise ParameterError("frames contain NaN values (the generation diverged); try another seed or dtype fp32")
    return chunk.clamp(0, 1).mul(255).round().to(torch.uint8).numpy()


def _encode_video(target: Path, chunks: Iterator[np.ndarray], *, fps: float, crf: int, preset: str,
                  tags: Path | None, movflags: str) -> tuple[int, int, int]:
    """Pipe chunks into ffmpeg (rgb24 on stdin) -> H.264 yuv420p; returns (frames, width, height)."""
    first = next(chunks, None)
    if first is None or first.shape[0] == 0:
        raise ParameterError("no frames to write: the frame tensor/iterator is empty")
    in_height, in_width = first.shape[1:3]
    width, height = in_width // 2 * 2, in_height // 2 * 2  # crop to even, see module docstring
    if width < 2 or height < 2:
        raise ParameterError(f"frames of {in_width}x{in_height} px are too small to encode (need at least 2x2)")
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", fraction_fps(fps), "-i", "-",
               *_metadata_input(tags, 1), "-map", "0:v:0", "-c:v", "libx264", "-preset", preset, "-crf", str(crf),
               "-pix_fmt", "yuv420p", "-movflags", movflags, "-f", "mp4", str(target)]
    count = 0
    with tempfile.TemporaryFile() as log:
        process = popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
        try:
            chunk = first
            while chunk is not None:
                if chunk.shape[1:] != (in_height, in_width, 3):
                    raise ParameterError(f"all frames must have the same size: got {tuple(chunk.shape[1:3])} after "
                                         f"{(in_height, in_width)}")
                try:
                    process.stdin.write(np.ascontiguousarray(chunk[:, :height, :width]).tobytes())
                except BrokenPipeError:
                    break  # ffmpeg died; its log says why (reported below)
                count += chunk.shape[0]
                chunk = next(chunks, None)
            process.stdin.close()
            code = process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise
        if code != 0:
            log.seek(0)
            raise OutputError(f"ffmpeg failed to encode the video (exit {code}): "
                              f"{tail_lines(log.read().decode(errors='replace'))}")
    return count, width, height


# --------------------------------------------------------------------------------------------
# audio + mux
# --------------------------------------------------------------------------------------------

def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    import soundfile

    try:
        soundfile.write(str(path), np.ascontiguousarray(audio.T), int(sample_rate), subtype="FLOAT", format="WAV")
    except (RuntimeError, soundfile.SoundFileError) as exc:  # libsndfile's text for a full disk, quota, ...
        raise OutputError(f"could not write the temporary soundtrack in {str(path.parent.parent.parent)!r} "
                          f"({' '.join(str(exc).split())[:200]}); is the disk full? free some space or "
                          f"write elsewhere") from None


def _mux(video: Path, wav: Path, target: Path, tags: Path, movflags: str) -> None:
    """Copy the H.264 stream (no second encode) and encode the WAV to AAC, both fully mapped."""
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
               "-i", str(video), "-i", str(wav), *_metadata_input(tags, 2), "-map", "0:v:0", "-map", "1:a:0",
               "-c:v", "copy", "-c:a", "aac", "-b:a", "160k", "-movflags", movflags, "-f", "mp4", str(target)]
    result = run_child(command, capture_output=True)
    if result.returncode != 0:
        raise OutputError(f"ffmpeg failed to add the audio (exit {result.returncode}): "
                          f"{tail_lines(result.stderr.decode(errors='replace'))}")


def _metadata_input(tags: Path | None, index: int) -> list[str]:
    """ffmpeg arguments reading the container tags from the metadata file, input number `index`."""
    return [] if tags is None else ["-f", "ffmetadata", "-i", str(tags), "-map_metadata", str(index)]


def _verify(path: Path, *, frame_count: int, width: int, height: int, fps: float, has_audio: bool) -> None:
    """The written file has what we asked for; otherwise it is not published."""
    if not path.is_file() or path.stat().st_size == 0:
        raise OutputError(f"ffmpeg wrote no output for {str(path)!r}; see the log above")
    info = probe(path)
    problems = []
    if info["video_codec"] != "h264":
        problems.append(f"video codec {info['video_codec']!r} instead of h264")
    if (info["width"], info["height"]) != (width, height):
        problems.append(f"size {info['width']}x{info['height']} instead of {width}x{height}")
    if info["frame_count"] != frame_count:
        problems.append(f"{info['frame_count']} frames instead of {frame_count}")
    if has_audio:
        if info["audio_codec"] != "aac":
            problems.append(f"audio codec {info['audio_codec']!r} instead of aac")
        elif info["audio_duration"] is None or abs(info["audio_duration"] - frame_count / fps) > 1 / fps:
            problems.append(f"audio lasts {info['audio_duration']} s instead of {frame_count / fps:.3f} s")
    if problems:
        raise OutputError(f"the encoded file is not what was asked for ({'; '.join(problems)}); "
                          f"this is a bug or a broken ffmpeg, please report it")
