"""Audio front end: load any audio as 16 kHz mono, Whisper log-mel, hidden states, per-frame windows.

SPEC 3. The official code loads audio with `librosa.load(path, sr=16000)` (channel mean, then
soxr 'HQ' resampling); `load_audio` gives the same samples for every file libsndfile reads and
decodes the rest (M4A/AAC, video containers, ...) through the bundled ffmpeg binary.

Units: samples are at 16 kHz; a log-mel frame is 10 ms (hop 160), a Whisper step 20 ms, an
audio frame 40 ms (640 samples), a generated frame 80 ms (1280 samples).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import (BUCKET_WINDOW, BUCKET_WINDOW_PAD, SAMPLE_RATE, TOKEN_WINDOW, TOKEN_WINDOW_PAD,
                     WHISPER_CHUNK_SAMPLES, WHISPER_CHUNK_STEPS)
from ..errors import AudioError
from ..diffusion.timeline import MIN_AUDIO_SECONDS, Timeline, resolve_duration
from .audio_files import (DEFAULT_MAX_AUDIO_SECONDS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, check_length_cap,  # noqa: F401
                          check_rate, decode_file)

SILENCE_PEAK = 1e-4  # a clip whose largest |sample| is below this is treated as silent
ABSURD_PEAK = 64.0  # float audio is nominally within [-1, 1]; far beyond it is not sound but garbage
TENSOR_SOURCE = "<tensor>"

# Whisper log-mel settings (whisper-tiny preprocessor_config.json)
N_FFT = 400  # samples (25 ms)
HOP_LENGTH = 160  # samples (10 ms)
N_MELS = 80
LOG_FLOOR = 1e-10
DYNAMIC_RANGE = 8.0  # log10 units kept below each chunk's maximum
WINDOW_STRIDE = 2 * 2  # Whisper steps between consecutive generated frames (2 steps/audio frame x 2)


@dataclass(frozen=True)
class AudioClip:
    """A loaded audio clip: what Whisper sees plus the original signal for the soundtrack."""

    samples: np.ndarray  # float32 [S], mono, 16 kHz
    original: np.ndarray  # float32 [C, T] at original_rate, as decoded (no resampling, no downmix)
    original_rate: int  # Hz
    source: str  # file name, or "<tensor>" for in-memory audio (used in messages)

    @property
    def seconds(self) -> float:
        """Length of the 16 kHz signal in seconds."""
        return len(self.samples) / SAMPLE_RATE

    @property
    def timeline(self) -> Timeline:
        """Frame counts for this clip (raises `AudioError` if it is under 0.2 s)."""
        return Timeline.from_samples(len(self.samples))

    def trimmed(self, seconds: float) -> "AudioClip":
        """The first `seconds` of the clip, cut in both the 16 kHz samples and the original."""
        keep_16k = min(len(self.samples), round(seconds * SAMPLE_RATE))
        keep_original = min(self.original.shape[1], round(seconds * self.original_rate))
        return AudioClip(self.samples[:keep_16k], self.original[:, :keep_original], self.original_rate, self.source)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def load_audio(source, *, duration: float | None = None,
               max_seconds: float | None = DEFAULT_MAX_AUDIO_SECONDS) -> AudioClip:
    """Load audio as 16 kHz mono float32 and keep the original for muxing.

    `source` is a file path (str / Path; WAV, MP3, FLAC, OGG/Vorbis, Opus, M4A/AAC, ... at any
    rate and channel count), a `(waveform, sample_rate)` tuple (waveform np/torch [T] or [C, T]),
    a ComfyUI AUDIO dict `{"waveform": [B, C, T], "sample_rate": int}` (batch item 0 is used) or
    an `AudioClip`. `duration` (seconds; None or 0 = whole audio) trims the clip, see
    `timeline.resolve_duration`; from a file only that much (plus a margin) is decoded.
    `max_seconds` (None = no cap) refuses longer audio unless `duration` takes its start; a
    file's header is checked before decoding. Raises `AudioError` for unusable audio (missing,
    not a regular file, undecodable, truncated, implausible rate, too long, empty, non-finite
    or absurd values, silent, shorter than 0.2 s) and `ParameterError` for a bad `duration`.
    """
    if isinstance(source, AudioClip):
        clip = source
    elif isinstance(source, (str, Path)):
        original, rate = decode_file(Path(source), duration=duration, max_seconds=max_seconds)
        clip = _clip_from_original(original, rate, Path(source).name)
    elif isinstance(source, dict):
        clip = _clip_from_comfy_audio(source)
    elif isinstance(source, (tuple, list)) and len(source) == 2:
        waveform, rate = source
        original = _as_channels_first(waveform, TENSOR_SOURCE)
        clip = _clip_from_original(original, check_rate(rate, TENSOR_SOURCE), TENSOR_SOURCE)
    else:
        raise AudioError(
            f"unsupported audio input of type {type(source).__name__}: pass a file path, a (waveform, sample_rate) "
            f"tuple, a ComfyUI AUDIO dict or an AudioClip")

    _check_length(clip)
    if not duration:
        check_length_cap(clip.seconds, max_seconds, clip.source)
    seconds = resolve_duration(clip.seconds, duration)
    if seconds < clip.seconds:
        clip = clip.trimmed(seconds)
    _check_length(clip)
    _check_not_silent(clip)
    return clip


def _clip_from_comfy_audio(audio: dict) -> AudioClip:
    if "waveform" not in audio or "sample_rate" not in audio:
        raise AudioError(f"an AUDIO dict needs 'waveform' and 'sample_rate' keys, got keys {sorted(audio)}")
    waveform = audio["waveform"]
    if getattr(waveform, "ndim", None) != 3:
        raise AudioError(
            f"the AUDIO waveform must have shape [batch, channels, samples], got shape {tuple(np.shape(waveform))}")
    if waveform.shape[0] == 0:
        raise AudioError("the AUDIO input holds an empty batch; connect an audio source that produced a clip")
    original = _as_channels_first(waveform[0], TENSOR_SOURCE)
    return _clip_from_original(original, check_rate(audio["sample_rate"], TENSOR_SOURCE), TENSOR_SOURCE)


def _as_channels_first(waveform, source: str) -> np.ndarray:
    """float32 [C, T] from np / torch [T] or [C, T]."""
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.detach().to("cpu", torch.float32).numpy()
    array = np.asarray(waveform, dtype=np.float32)
    if not array.flags.writeable:  # e.g. np.frombuffer: torch warns about read-only arrays later
        array = array.copy()
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2:
        raise AudioError(f"{source}: the waveform must have shape [samples] or [channels, samples], got {array.shape}")
    if array.shape[0] > 64 and array.shape[1] <= 64:
        raise AudioError(
            f"{source}: the waveform has shape {array.shape}, which looks like [samples, channels]; "
            f"pass it as [channels, samples] (transpose it)")
    return array


def _clip_from_original(original: np.ndarray, rate: int, source: str) -> AudioClip:
    if original.shape[1] == 0:
        raise AudioError(f"audio '{source}' contains no samples; use a file that holds sound")
    if not np.isfinite(original).all():
        raise AudioError(f"audio '{source}' contains NaN or infinite sample values; re-export or re-encode it")
    peak = float(np.max(np.abs(original)))
    if peak > ABSURD_PEAK:
        raise AudioError(f"audio '{source}' holds absurd sample values (peak {peak:.3g}, sound lies within -1..1); "
                         f"the file is damaged or not audio: re-export it")
    return AudioClip(to_mono_16k(original, rate), original, rate, source)


def to_mono_16k(original: np.ndarray, rate: int) -> np.ndarray:
    """Channel mean, then soxr 'HQ' resampling to 16 kHz, exactly as `librosa.load(path, sr=16000)`.

    At 16 kHz the signal is returned unchanged (no resampling, no normalisation).
    """
    import soxr

    mono = original[0] if original.shape[0] == 1 else np.mean(original, axis=0)
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if rate == SAMPLE_RATE:
        return mono
    resampled = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    # librosa fixes the length to ceil(T * 16000 / rate); soxr can differ by a sample.
    target = int(math.ceil(len(mono) * SAMPLE_RATE / rate))
    if len(resampled) >= target:
        return np.ascontiguousarray(resampled[:target], dtype=np.float32)
    return np.pad(resampled, (0, target - len(resampled))).astype(np.float32, copy=False)


def _check_length(clip: AudioClip) -> None:
    if clip.seconds < MIN_AUDIO_SECONDS:
        raise AudioError(
            f"audio '{clip.source}' is only {clip.seconds:.3f} s long; at least {MIN_AUDIO_SECONDS} s is needed "
            f"(one video frame per 80 ms). Use a longer clip.")


def _check_not_silent(clip: AudioClip) -> None:
    peak = float(np.max(np.abs(clip.samples)))
    if peak < SILENCE_PEAK:
        raise AudioError(
            f"audio '{clip.source}' is silent (peak level {peak:.1e}); a talking head needs speech. "
            f"Check that the right file/track is used and that it is not muted.")


# --------------------------------------------------------------------------------------------
# Whisper log-mel (SPEC 3.1)
# --------------------------------------------------------------------------------------------

def _hz_to_slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz (3 mel per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = 3.0 * hz / 200.0
    log_step = math.log(6.4) / 27.0
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / log_step, linear)


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_step = math.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), 200.0 * mel / 3.0)


@functools.lru_cache(maxsize=1)
def mel_filters() -> torch.Tensor:
    """Slaney-normalised triangular mel filter bank, float32 (N_FFT // 2 + 1, N_MELS) = (201, 80).

    Computed in float64 (as Whisper's extractor does) and rounded once to float32.
    """
    fft_hz = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges_hz = _slaney_mel_to_hz(np.linspace(_hz_to_slaney_mel(0.0), _hz_to_slaney_mel(SAMPLE_RATE / 2), N_MELS + 2))
    widths = np.diff(edges_hz)
    offsets = edges_hz[:, None] - fft_hz[None, :]  # (N_MELS + 2, bins)
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]  # equal area per filter
    return torch.from_numpy(weights.T.astype(np.float32))


def log_mel_chunk(chunk) -> torch.Tensor:
    """Whisper log-mel of one chunk of at most 30 s (480000 samples), zero-padded to 30 s: (1, 80, 3000).

    The dynamic-range clamp (max - 8) is taken over this chunk, padding included, as the reference does.
    """
    chunk = torch.as_tensor(chunk, dtype=torch.float32).cpu().reshape(-1)
    if chunk.numel() > WHISPER_CHUNK_SAMPLES:
        raise ValueError(f"a log-mel chunk holds at most {WHISPER_CHUNK_SAMPLES} samples, got {chunk.numel()}")
    padded = torch.nn.functional.pad(chunk, (0, WHISPER_CHUNK_SAMPLES - chunk.numel()))
    spectrum = torch.stft(padded, N_FFT, HOP_LENGTH, window=torch.hann_window(N_FFT), center=True,
                          pad_mode="reflect", return_complex=True)
    power = spectrum[..., :-1].abs() ** 2  # (201, 3000): the last centred frame is dropped
    mel = mel_filters().T @ power
    log_spec = torch.clamp(mel, min=LOG_FLOOR).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - DYNAMIC_RANGE)
    return ((log_spec + 4.0) / 4.0)[None]


def num_chunks(num_samples: int) -> int:
    """30 s Whisper chunks for `num_samples` 16 kHz samples: ceil(S / 480000)."""
    return math.ceil(num_samples / WHISPER_CHUNK_SAMPLES)


def log_mel(samples) -> torch.Tensor:
    """Whisper log-mel of a whole clip, per 30 s chunk: (1, 80, 3000 * n_chunks), float32, CPU."""
    samples = torch.as_tensor(samples, dtype=torch.float32).reshape(-1)
    chunks = [log_mel_chunk(samples[start:start + WHISPER_CHUNK_SAMPLES])
              for start in range(0, samples.numel(), WHISPER_CHUNK_SAMPLES)]
    return torch.cat(chunks, dim=-1)


# --------------------------------------------------------------------------------------------
# Whisper hidden states (SPEC 3.2) and per-frame windows (SPEC 3.3)
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def whisper_hidden_states(encoder, samples, *, device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Stacked Whisper hidden states of a clip: (1, 2 * audio_frames, 5, d), float32 on `device`.

    `samples` are 16 kHz mono (np or torch, [S]); `device`/`dtype` default to the encoder's
    (the official code runs Whisper in float32). One encoder pass per 30 s chunk (positions
    restart in every chunk); chunks are processed one at a time and only the steps the windows
    need are kept, so memory grows with the clip length only through the result (5 * d floats
    per 20 ms step: 7.7 kB for whisper-tiny).
    """
    from ..models.whisper import encoder_hidden_states

    samples = torch.as_tensor(samples, dtype=torch.float32).reshape(-1)
    parameter = next(encoder.parameters())
    device = torch.device(device) if device is not None else parameter.device
    dtype = dtype if dtype is not None else parameter.dtype
    needed = Timeline.from_samples(samples.numel()).whisper_steps
    kept = []
    for index in range(math.ceil(needed / WHISPER_CHUNK_STEPS)):
        # The log-mel runs on the CPU in float32 like the reference extractor (bit-exact there).
        mel = log_mel_chunk(samples[index * WHISPER_CHUNK_SAMPLES:(index + 1) * WHISPER_CHUNK_SAMPLES])
        hidden = encoder_hidden_states(encoder, mel.to(device, dtype))
        kept.append(hidden[:, :needed - index * WHISPER_CHUNK_STEPS].float())
    return torch.cat(kept, dim=1)


def frame_windows(hidden: torch.Tensor, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-generated-frame Whisper windows (SPEC 3.3) as strided views (no copy).

    `hidden` (1, T, 5, d) with T >= 4 * num_frames. Frame i gets
    token window = steps [4i - 4, 4i + 6) of all 5 layers -> (num_frames, 10, 5, d) and
    bucket window = steps [4i - 24, 4i + 26) of the last layer -> (num_frames, 50, 1, d),
    with zeros outside [0, T) (the zero padding comes after the truncation to T steps).
    """
    if hidden.ndim != 4 or hidden.shape[0] != 1:
        raise ValueError(f"hidden states must have shape (1, steps, layers, width), got {tuple(hidden.shape)}")
    steps = hidden.shape[1]
    if num_frames < 0 or WINDOW_STRIDE * num_frames > steps:
        raise ValueError(f"{num_frames} frames need at least {WINDOW_STRIDE * num_frames} Whisper steps, got {steps}")
    token_windows = _strided_windows(hidden[0], TOKEN_WINDOW, TOKEN_WINDOW_PAD, num_frames)
    bucket_windows = _strided_windows(hidden[0, :, -1:], BUCKET_WINDOW, BUCKET_WINDOW_PAD, num_frames)
    return token_windows, bucket_windows


def _strided_windows(sequence: torch.Tensor, length: int, pad: tuple[int, int], count: int) -> torch.Tensor:
    """(count, length, layers, d) windows of `sequence` (T, layers, d), zero-padded by `pad` steps, stride 4."""
    padded = torch.nn.functional.pad(sequence, (0, 0, 0, 0, pad[0], pad[1]))
    return padded.unfold(0, length, WINDOW_STRIDE)[:count].permute(0, 3, 1, 2)
