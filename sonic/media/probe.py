"""Reading MP4 files back: stream facts (`probe`), the embedded Sonic tags, and decoded frames + audio.

Used to verify what `sonic.media.video.write_mp4` produced (durations, sizes, tags) and by
`python -m sonic check-sync` to measure any talking-head video. Everything goes through the
ffmpeg binary bundled with `imageio-ffmpeg` (no ffprobe exists there, see DEPENDENCIES.md);
`probe` prefers PyAV when it is installed because it reads container facts without decoding.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import SonicError
from .children import popen as popen_child, run as run_child

# The comment tag `sonic.media.video.write_mp4` fills with a JSON object (see `read_sonic_tags`).
SONIC_TAG_KEY = "comment"


class MediaReadError(SonicError):
    """A video file is missing, unreadable or not a video."""


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg (not on PATH under the name `ffmpeg`)."""
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise SonicError("imageio-ffmpeg is not installed; run `pip install imageio-ffmpeg`") from exc
    return imageio_ffmpeg.get_ffmpeg_exe()


def _existing_file(path) -> Path:
    from ..files import require_regular_file

    return require_regular_file(path, "video file", MediaReadError)


# --------------------------------------------------------------------------------------------
# probe
# --------------------------------------------------------------------------------------------

def probe(path, *, use_pyav: bool | None = None) -> dict:
    """Facts about the first video and first audio stream of a media file.

    Returns a dict with `video_codec`, `audio_codec` (None when there is no audio), `width`,
    `height` (pixels), `fps` (frames per second), `frame_count`, `video_duration` and
    `audio_duration` (seconds, None without that stream), `sample_rate` (Hz), `audio_channels`
    and `tags` (container-level metadata, str -> str).

    `use_pyav`: None = PyAV when importable, else ffmpeg; True/False force one route (tests
    compare both).
    """
    path = _existing_file(path)
    if use_pyav is None:
        try:
            import av  # noqa: F401
            use_pyav = True
        except ImportError:
            use_pyav = False
    return _probe_pyav(path) if use_pyav else _probe_ffmpeg(path)


def _probe_pyav(path: Path) -> dict:
    import av

    try:
        container = av.open(str(path))
    except Exception as exc:  # av raises many error types for undecodable input
        raise MediaReadError(f"cannot read {str(path)!r} as a video: {exc}") from exc
    with container:
        info = _empty_info()
        info["tags"] = {str(k): str(v) for k, v in container.metadata.items()}
        if container.streams.video:
            stream = container.streams.video[0]
            info["video_codec"] = stream.codec_context.name
            info["width"], info["height"] = stream.codec_context.width, stream.codec_context.height
            rate = stream.average_rate or stream.guessed_rate
            info["fps"] = float(rate) if rate else None
            frames = stream.frames
            if not frames:  # some containers do not store a count: count packets instead
                frames = sum(1 for packet in container.demux(stream) if packet.size)
                container.seek(0)
            info["frame_count"] = int(frames)
            if stream.duration is not None and stream.time_base is not None:
                info["video_duration"] = float(stream.duration * stream.time_base)
            elif info["fps"]:
                info["video_duration"] = frames / info["fps"]
        if container.streams.audio:
            stream = container.streams.audio[0]
            info["audio_codec"] = stream.codec_context.name
            info["sample_rate"] = stream.codec_context.sample_rate
            info["audio_channels"] = stream.codec_context.channels
            if stream.duration is not None and stream.time_base is not None:
                info["audio_duration"] = float(stream.duration * stream.time_base)
    return info


def _empty_info() -> dict:
    return {"video_codec": None, "audio_codec": None, "width": None, "height": None, "fps": None,
            "frame_count": None, "video_duration": None, "audio_duration": None, "sample_rate": None,
            "audio_channels": None, "tags": {}}


_VIDEO_LINE = re.compile(r"Stream #0:\d+[^:]*: Video: (\w+).*?, (\d+)x(\d+)")
_FPS = re.compile(r", ([\d.]+(?:k)?) fps")
_AUDIO_LINE = re.compile(r"Stream #0:\d+[^:]*: Audio: (\w+).*?, (\d+) Hz, ([^,]+)")
_FRAME_COUNT = re.compile(r"frame=\s*(\d+)")
_CHANNELS = {"mono": 1, "stereo": 2, "2.1": 3, "quad": 4, "5.0": 5, "5.1": 6, "6.1": 7, "7.1": 8}


def _probe_ffmpeg(path: Path) -> dict:
    """The same facts from `ffmpeg -i` text plus a stream-copy pass (frames) and an audio decode."""
    header = run_child([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True,
                       errors="replace").stderr
    if "Invalid data found" in header or "Stream #" not in header:
        raise MediaReadError(f"cannot read {str(path)!r} as a video: {tail_lines(header)}")
    info = _empty_info()
    info["tags"] = _container_tags(header)
    video = _VIDEO_LINE.search(header)
    if video:
        info["video_codec"] = video.group(1)
        info["width"], info["height"] = int(video.group(2)), int(video.group(3))
        line = header[video.start():header.find("\n", video.start())]
        fps = _FPS.search(line)
        if fps:
            text = fps.group(1)
            info["fps"] = float(text[:-1]) * 1000 if text.endswith("k") else float(text)
        counted = run_child([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:v:0",
                             "-c", "copy", "-f", "null", "-"], capture_output=True, text=True, errors="replace")
        counts = _FRAME_COUNT.findall(counted.stderr)
        info["frame_count"] = int(counts[-1]) if counts else None
        if info["frame_count"] is not None and info["fps"]:
            info["video_duration"] = info["frame_count"] / info["fps"]
    audio = _AUDIO_LINE.search(header)
    if audio:
        info["audio_codec"] = audio.group(1)
        info["sample_rate"] = int(audio.group(2))
        layout = audio.group(3).strip()
        info["audio_channels"] = _CHANNELS.get(layout, int(layout.split()[0]) if layout.split()[0].isdigit() else None)
        samples = _decode_audio(path, info["sample_rate"], 1)
        info["audio_duration"] = samples.shape[1] / info["sample_rate"]
    return info


def _container_tags(header: str) -> dict:
    """`key : value` lines of the first (container-level) Metadata block of `ffmpeg -i` output."""
    tags: dict[str, str] = {}
    lines = header.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("Input #0")) + 1
    except StopIteration:
        return tags
    if start >= len(lines) or lines[start].strip() != "Metadata:":
        return tags
    indent = None
    last_key = None
    for line in lines[start + 1:]:
        stripped = line.lstrip()
        depth = len(line) - len(stripped)
        indent = depth if indent is None else indent
        if depth < indent or not stripped:
            break
        key, sep, value = stripped.partition(":")
        if sep and key.strip():
            last_key = key.strip()
            tags[last_key] = value[1:] if value.startswith(" ") else value
        elif last_key is not None:  # ffmpeg prints multi-line values as `: continuation`
            tags[last_key] += "\n" + value.strip()
    return tags


def tail_lines(text: str, count: int = 5) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-count:])


# --------------------------------------------------------------------------------------------
# tags written by sonic.media.video
# --------------------------------------------------------------------------------------------

def read_sonic_tags(path) -> dict | None:
    """The JSON object Sonic stores in the `comment` tag (AI-generated flag, tool, parameters,
    input hashes), or None when the file carries none."""
    text = probe(path)["tags"].get(SONIC_TAG_KEY)
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


# --------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------

def read_video(path, *, max_height: int | None = None, audio_sample_rate: int | None = None,
               mono: bool = False, max_seconds: float | None = None):
    """Decode a video file into memory.

    Returns `(frames, fps, audio, sample_rate)`: frames uint8 `[T, H, W, 3]` (RGB), fps
    (frames per second), audio float32 `[C, S]` or None when the file has no audio, and its
    sample rate in Hz (None without audio).

    `max_height` (pixels) scales taller videos down on decode (area filter, even width), which
    bounds memory for long or large clips; `audio_sample_rate` resamples the audio and `mono`
    mixes it down; `max_seconds` reads only the start of the file. For long videos prefer
    `VideoStream`, which never holds more than one frame.
    """
    stream = VideoStream(path, max_height=max_height, max_seconds=max_seconds)
    frames = list(stream.frames())
    frames = np.stack(frames) if frames else np.zeros((0, stream.height, stream.width, 3), np.uint8)
    audio, rate = stream.audio(audio_sample_rate, mono=mono)
    return frames, stream.fps, audio, rate


class VideoStream:
    """A video file read frame by frame (memory flat in its length): `frames()` may be called
    again for another pass; `audio()` decodes the soundtrack. Sizes are after the `max_height`
    scaling (area filter, even width), in pixels."""

    def __init__(self, path, *, max_height: int | None = None, max_seconds: float | None = None):
        self.path = _existing_file(path)
        self.info = probe(self.path)
        if self.info["video_codec"] is None or not self.info["width"]:
            raise MediaReadError(f"{str(self.path)!r} has no video stream")
        self.max_seconds = max_seconds
        self.width, self.height = self.info["width"], self.info["height"]
        self.scaled = max_height is not None and self.height > max_height
        if self.scaled:
            self.width = max(2, round(self.width * max_height / self.height / 2) * 2)
            self.height = max_height
        self.fps = self.info["fps"] or 25.0
        duration = self.info["video_duration"] or self.info["audio_duration"] or 0.0
        count = self.info["frame_count"] or int(round(duration * self.fps))
        if max_seconds is not None:
            count = min(count, int(math.ceil(max_seconds * self.fps)))
        self.expected_frames = count

    def frames(self) -> Iterator[np.ndarray]:
        """uint8 RGB frames `[H, W, 3]`, one at a time, from a child ffmpeg (ended when the iteration ends)."""
        import tempfile

        command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin"]
        if self.max_seconds is not None:
            command += ["-t", f"{self.max_seconds:.6f}"]
        command += ["-i", str(self.path), "-map", "0:v:0"]
        if self.scaled:
            command += ["-vf", f"scale={self.width}:{self.height}:flags=area"]
        command += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        frame_bytes = self.width * self.height * 3
        with tempfile.TemporaryFile() as log:
            process = popen_child(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
            read = 0
            try:
                while True:
                    data = process.stdout.read(frame_bytes)
                    if len(data) < frame_bytes:
                        break
                    read += 1
                    yield np.frombuffer(data, np.uint8).reshape(self.height, self.width, 3)
                code = process.wait()
            finally:
                if process.poll() is None:  # the caller stopped early, or an error: end ffmpeg now
                    process.kill()
                    process.wait()
                process.stdout.close()
            if code != 0 and read == 0:
                log.seek(0)
                raise MediaReadError(f"ffmpeg could not decode {str(self.path)!r}: "
                                     f"{tail_lines(log.read().decode(errors='replace'))}")

    def audio(self, sample_rate: int | None = None, *, mono: bool = False):
        """(float32 `[C, S]`, rate) of the soundtrack (resampled to `sample_rate`), or (None, None)."""
        if self.info["audio_codec"] is None:
            return None, None
        rate = sample_rate or self.info["sample_rate"]
        channels = 1 if mono else (self.info["audio_channels"] or 1)
        return _decode_audio(self.path, rate, channels, max_seconds=self.max_seconds), rate


def _decode_audio(path: Path, sample_rate: int, channels: int, *, max_seconds: float | None = None) -> np.ndarray:
    """First audio stream as float32 `[channels, samples]` at `sample_rate` Hz (edit lists applied)."""
    command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin"]
    if max_seconds is not None:
        command += ["-t", f"{max_seconds:.6f}"]
    command += ["-i", str(path), "-map", "0:a:0", "-f", "f32le", "-acodec", "pcm_f32le",
                "-ar", str(int(sample_rate)), "-ac", str(int(channels)), "-"]
    result = run_child(command, capture_output=True)
    if result.returncode != 0:
        raise MediaReadError(f"ffmpeg could not decode the audio of {str(path)!r}: "
                             f"{tail_lines(result.stderr.decode(errors='replace'))}")
    samples = np.frombuffer(result.stdout, dtype="<f4")
    samples = samples[: len(samples) // channels * channels]
    return samples.reshape(-1, channels).T.astype(np.float32, copy=True)


def fraction_fps(fps: float) -> str:
    """An exact-ish rational string for ffmpeg's `-r` (25 -> '25/1', 29.97 -> '2997/100', 12.5 -> '25/2')."""
    ratio = Fraction(fps).limit_denominator(1001)
    return f"{ratio.numerator}/{ratio.denominator}"
