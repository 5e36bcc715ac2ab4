"""Decoding audio files without trusting them: what is read, how much, and what the header promised.

libsndfile (WAV, FLAC, OGG, MP3, ...) is asked for the header first: the rate must be
plausible, the length under the cap (`max_audio_seconds`, default 2 hours) unless only the
start is wanted, and then only the frames needed are decoded (a 2-hour FLAC for a 1-second job
decodes 1 s plus a margin), and the count read must match what the header promised. Anything
libsndfile does not know (M4A/AAC, video containers) goes through the bundled ffmpeg with a
time limit (`-t`), so its output is bounded too.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np

from ..config import DEFAULT_MAX_AUDIO_SECONDS
from ..errors import AudioError

MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 768_000  # Hz: telephone-band speech up to studio rates
MAX_CHANNELS = 64
MARGIN_SECONDS = 1.0  # decoded beyond `duration` so resampling near the cut sees the same neighbours
SHORTFALL = 0.01  # fewer frames than the header promised by more than this fraction: a damaged file


def check_rate(rate, source: str) -> int:
    """A plausible whole number of Hz, else `AudioError` (e.g. a header claiming 4 Hz would make
    hours of video from a few samples)."""
    valid = (not isinstance(rate, bool) and isinstance(rate, (int, np.integer, float)) and math.isfinite(rate)
             and rate > 0 and rate == int(rate))
    if not valid:
        raise AudioError(f"{source}: the sample rate must be a positive whole number of Hz, got {rate!r}")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{source}: a sample rate of {int(rate)} Hz is not plausible for speech; give the real "
                         f"rate ({MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz, e.g. 16000 or 44100)")
    return int(rate)


def check_length_cap(seconds: float, max_seconds: float | None, source: str) -> None:
    if max_seconds is not None and seconds > max_seconds + 1e-6:
        raise AudioError(f"audio '{source}' lasts {seconds / 60:.1f} min, more than the limit of "
                         f"{max_seconds / 60:.1f} min (max_audio_seconds; CLI --max-audio-seconds); use duration "
                         f"(--duration) to take only its start, or raise the limit")


def wanted_seconds(duration) -> float | None:
    """Seconds to decode for `duration` (None/0/invalid: the whole file; invalid values are refused later)."""
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration):
        return None
    return float(duration) + MARGIN_SECONDS if duration > 0 else None


def decode_file(path: Path, *, duration=None, max_seconds: float | None = DEFAULT_MAX_AUDIO_SECONDS
                ) -> tuple[np.ndarray, int]:
    """float32 [C, T] and the native rate: libsndfile first, then the bundled ffmpeg."""
    import soundfile

    from ..files import require_regular_file

    path = require_regular_file(path, "audio file", AudioError)
    if path.stat().st_size == 0:
        raise AudioError(f"audio file '{path}' is empty (0 bytes); re-export or re-download it")
    wanted = wanted_seconds(duration)
    try:
        handle = soundfile.SoundFile(str(path))
    except (RuntimeError, soundfile.SoundFileError, TypeError, ValueError):
        return _decode_with_ffmpeg(path, wanted, max_seconds)  # not a format libsndfile knows
    with handle:
        return _read_sndfile(handle, path, wanted, max_seconds)


def _read_sndfile(handle, path: Path, wanted: float | None, max_seconds: float | None) -> tuple[np.ndarray, int]:
    import soundfile

    rate = check_rate(handle.samplerate, f"audio file '{path}'")
    if not 1 <= handle.channels <= MAX_CHANNELS:
        raise AudioError(f"audio file '{path}' claims {handle.channels} channels; re-export it as mono or stereo")
    promised = int(handle.frames)
    if wanted is None:
        check_length_cap(promised / rate, max_seconds, path.name)
        count = promised
    else:
        count = min(promised, int(math.ceil(wanted * rate)))
    try:
        data = handle.read(count, dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.SoundFileError, ValueError, MemoryError) as exc:
        if isinstance(exc, MemoryError):
            raise
        raise AudioError(f"audio file '{path}' cannot be decoded ({' '.join(str(exc).split())[:160]}); "
                         f"re-export it as WAV, MP3 or FLAC") from None
    if count and data.shape[0] < count * (1 - SHORTFALL) - 1:
        raise AudioError(f"audio file '{path}' is damaged or truncated: its header promises {count} frames "
                         f"({count / rate:.2f} s) but only {data.shape[0]} could be read; re-export it")
    return np.ascontiguousarray(data.T), rate


def _decode_with_ffmpeg(path: Path, wanted: float | None, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """The first audio stream through the bundled ffmpeg at its native rate and channel count.

    ffmpeg writes 32-bit float PCM in a WAV stream to stdout; its header tells the rate and the
    channel count, so no ffprobe is needed. `-t` bounds what is decoded: the wanted seconds, or
    just over the cap (so a longer file is recognised and refused).
    """
    import imageio_ffmpeg

    from ..media.children import run

    limit = wanted if wanted is not None else (max_seconds + 1.0 if max_seconds is not None else None)
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path)]
    if limit is not None:
        command += ["-t", f"{limit:.6f}"]
    command += ["-map", "0:a:0", "-vn", "-sn", "-dn", "-map_metadata", "-1", "-c:a", "pcm_f32le", "-f", "wav", "-"]
    try:
        result = run(command, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    except OSError as exc:
        raise AudioError(f"could not run ffmpeg to decode audio file '{path}': {exc}") from exc
    if result.returncode != 0 or len(result.stdout) < 12:
        reason = result.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = reason[-1] if reason else f"ffmpeg exit code {result.returncode}"
        raise AudioError(
            f"audio file '{path}' cannot be decoded (not an audio file, corrupt, or no audio track: {reason}); "
            f"convert it to WAV, MP3 or FLAC and try again")
    original, rate = parse_float_wav(result.stdout, path)
    rate = check_rate(rate, f"audio file '{path}'")
    if wanted is None:
        check_length_cap(original.shape[1] / rate, max_seconds, path.name)
    return original, rate


def parse_float_wav(stream: bytes, path: Path) -> tuple[np.ndarray, int]:
    """float32 [C, T] and rate from ffmpeg's piped float WAV (chunk sizes may be 0xFFFFFFFF)."""
    if stream[:4] != b"RIFF" or stream[8:12] != b"WAVE":
        raise AudioError(f"audio file '{path}' cannot be decoded: ffmpeg produced no WAV stream")
    position, channels, rate = 12, None, None
    while position + 8 <= len(stream):
        chunk_id, size = stream[position:position + 4], int.from_bytes(stream[position + 4:position + 8], "little")
        body = position + 8
        if chunk_id == b"fmt ":
            channels = int.from_bytes(stream[body + 2:body + 4], "little")
            rate = int.from_bytes(stream[body + 4:body + 8], "little")
        elif chunk_id == b"data":
            if not channels or not rate or channels > MAX_CHANNELS:
                break
            usable = (len(stream) - body) // (4 * channels) * 4 * channels
            samples = np.frombuffer(stream, dtype="<f4", count=usable // 4, offset=body)
            # a copy: frombuffer over bytes is read-only, and torch warns about read-only arrays
            return np.array(samples.reshape(-1, channels).T, dtype=np.float32, order="C"), rate
        position = body + size + (size & 1)
    raise AudioError(f"audio file '{path}' cannot be decoded: ffmpeg's output has no audio data")
