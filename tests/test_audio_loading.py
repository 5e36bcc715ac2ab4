"""Audio loading: every format through real encoders (the bundled ffmpeg), resampling, inputs, errors.

Measured with ffmpeg n9.0.2 on a 2.5 s 44.1 kHz stereo source: WAV, FLAC, MP3 (LAME header),
OGG/Vorbis, Opus and M4A/AAC all decode to exactly the source length with zero lag (libsndfile
honours the LAME gapless header, ffmpeg the MP4 edit list; Opus always decodes at 48 kHz).
Without that metadata the codec priming stays in the decoded signal and is reported as part of
the audio: raw ADTS .aac +31.0 ms (1024 priming samples + padding, onset 23.2 ms late), MP3
without a Xing/LAME header +33.9 ms (onset 25.1 ms late).
"""

from __future__ import annotations

import math
import subprocess
import tracemalloc

import numpy as np
import pytest
from pathlib import Path
import soundfile
import torch

from sonic.inputs.audio import AudioClip, load_audio, to_mono_16k
from sonic.errors import AudioError, ParameterError

SOURCE_RATE = 44_100
SOURCE_SECONDS = 2.5
ONE_MS_16K = 16  # samples


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def encode(source, target, *codec_args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error", "-i", str(source), *codec_args, str(target)],
                   check=True)


def speech_like_stereo(seconds: float, rate: int) -> np.ndarray:
    """float32 [2, T]: a gliding 120 +- 30 Hz pulse train with 24 harmonics, syllable envelope, breath noise."""
    t = np.arange(round(seconds * rate)) / rate
    rng = np.random.default_rng(0)
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 25))
    syllables = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 0.5
    left = 0.25 * voiced * syllables + 0.02 * rng.standard_normal(t.size)
    right = 0.8 * left + 0.01 * rng.standard_normal(t.size)
    stereo = np.stack([left, right])
    return (stereo / (1.25 * np.abs(stereo).max())).astype(np.float32)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The float WAV every other format is encoded from, and its 16 kHz mono reference."""
    folder = tmp_path_factory.mktemp("audio")
    stereo = speech_like_stereo(SOURCE_SECONDS, SOURCE_RATE)
    path = folder / "source.wav"
    soundfile.write(path, stereo.T, SOURCE_RATE, subtype="FLOAT")
    return path, stereo, to_mono_16k(stereo, SOURCE_RATE)


# name, codec arguments, max |error| against the reference (of a 0.8 peak), min correlation
FORMATS = [
    ("pcm_u8.wav", ["-c:a", "pcm_u8"], 1e-2, 0.9999),
    ("pcm_s16.wav", ["-c:a", "pcm_s16le"], 1e-4, 0.99999),
    ("pcm_s24.wav", ["-c:a", "pcm_s24le"], 1e-6, 0.99999),
    ("pcm_s32.wav", ["-c:a", "pcm_s32le"], 1e-6, 0.99999),
    ("pcm_f32.wav", ["-c:a", "pcm_f32le"], 0.0, 0.99999),
    ("lossless.flac", ["-c:a", "flac"], 1e-6, 0.99999),
    ("lame.mp3", ["-c:a", "libmp3lame", "-b:a", "128k"], 0.3, 0.99),
    ("vorbis.ogg", ["-c:a", "libvorbis", "-q:a", "5"], 0.3, 0.99),
    ("speech.opus", ["-c:a", "libopus", "-b:a", "64k"], 0.3, 0.99),
    ("itunes.m4a", ["-c:a", "aac", "-b:a", "128k"], 0.3, 0.99),
]


@pytest.mark.parametrize("name, codec, max_error, min_correlation", FORMATS, ids=[f[0] for f in FORMATS])
def test_every_format_loads_with_the_right_length_and_content(source, name, codec, max_error, min_correlation):
    source_path, stereo, reference = source
    path = source_path.parent / name
    encode(source_path, path, *codec)
    clip = load_audio(path)

    assert clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert clip.original.dtype == np.float32 and clip.original.shape[0] == 2
    assert clip.source == name
    # Duration within 1 ms of the source, for the 16 kHz samples and for the kept original.
    assert abs(len(clip.samples) - len(reference)) <= ONE_MS_16K
    assert abs(clip.original.shape[1] / clip.original_rate - SOURCE_SECONDS) <= 1e-3
    assert clip.seconds == pytest.approx(SOURCE_SECONDS, abs=1e-3)
    # Same content, no time shift.
    count = min(len(clip.samples), len(reference))
    assert np.abs(clip.samples[:count] - reference[:count]).max() <= max_error
    assert np.corrcoef(clip.samples[:count], reference[:count])[0, 1] >= min_correlation
    assert best_lag(clip.samples, reference) == 0


def best_lag(signal: np.ndarray, reference: np.ndarray, search: int = 800) -> int:
    """Samples by which `signal` lags `reference` (cross-correlation peak over +-search samples)."""
    segment = reference[search:-search]
    scores = np.correlate(signal[:len(reference)], segment, mode="valid")
    return int(np.argmax(scores)) - search


def test_m4a_really_goes_through_ffmpeg(source):
    source_path, _, _ = source
    path = source_path.parent / "check.m4a"
    encode(source_path, path, "-c:a", "aac")
    with pytest.raises(Exception):
        soundfile.info(str(path))  # libsndfile cannot read it: the loader must fall back to ffmpeg
    assert load_audio(path).original_rate == SOURCE_RATE


def test_ffmpeg_decoded_and_read_only_inputs_give_writable_arrays(source):
    """A 16 kHz mono track decoded by ffmpeg (an MP4 as audio) used to stay a read-only view of ffmpeg's
    output, and torch printed a 'non-writable array' UserWarning; read-only arrays given in memory too."""
    import warnings

    from sonic.inputs.audio import log_mel

    source_path, _, _ = source
    path = source_path.parent / "mono16k.mp4"
    encode(source_path, path, "-ac", "1", "-ar", "16000", "-c:a", "aac")
    read_only = np.frombuffer(sine(200.0, 1.0, 16_000).tobytes(), dtype=np.float32)
    for clip in (load_audio(path), load_audio((read_only, 16_000))):
        assert clip.original_rate == 16_000
        assert clip.samples.flags.writeable and clip.original.flags.writeable
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            log_mel(clip.samples)


@pytest.mark.parametrize("name, codec, extra_ms", [
    ("adts.aac", ["-c:a", "aac"], 31.0),
    ("no_header.mp3", ["-c:a", "libmp3lame", "-write_xing", "0"], 33.9),
])
def test_codec_priming_without_metadata_is_reported_as_decoded(source, name, codec, extra_ms):
    """Without gapless metadata the decoder output is longer; we report what was decoded, not the source length."""
    source_path, _, reference = source
    path = source_path.parent / name
    encode(source_path, path, *codec)
    clip = load_audio(path)
    measured_ms = (len(clip.samples) - len(reference)) / ONE_MS_16K
    assert measured_ms == pytest.approx(extra_ms, abs=2.0)
    assert clip.seconds == pytest.approx(clip.original.shape[1] / clip.original_rate, abs=1 / 16000)
    assert 20 <= best_lag(clip.samples, reference) / ONE_MS_16K <= 30  # the priming delays the onset


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # audioread's imports of aifc/audioop/sunau
def test_equals_librosa_load(source):
    """The official loader is librosa.load(path, sr=16000); the samples must be identical."""
    import librosa

    source_path, _, _ = source
    path = source_path.parent / "librosa.flac"
    encode(source_path, path, "-c:a", "flac")
    expected, _ = librosa.load(str(path), sr=16000)
    # Exact on any CPU: both sides run the same decoder, channel mean and soxr HQ code in this process.
    assert np.array_equal(load_audio(path).samples, expected)


def sine(frequency: float, amplitude: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def spectrum_peak(samples: np.ndarray, rate: int = 16000) -> tuple[float, float]:
    """(frequency in Hz, sine amplitude) of the strongest component, away from the edges."""
    core = samples[rate // 10:-rate // 10]
    window = np.hanning(len(core))
    magnitude = np.abs(np.fft.rfft(core * window))
    peak = int(np.argmax(magnitude))
    return peak * rate / len(core), 2 * magnitude[peak] / window.sum()


@pytest.mark.parametrize("rate, frequency", [(48_000, 1000.0), (44_100, 3000.0), (8_000, 440.0), (22_050, 6000.0)])
def test_resampling_keeps_frequency_and_amplitude(tmp_path, rate, frequency):
    path = tmp_path / f"sine_{rate}.wav"
    soundfile.write(path, sine(frequency, 0.5, rate), rate, subtype="PCM_24")
    clip = load_audio(path)
    assert len(clip.samples) == math.ceil(rate * 1.0 * 16000 / rate)
    found_frequency, amplitude = spectrum_peak(clip.samples)
    assert found_frequency == pytest.approx(frequency, abs=2.0)
    assert amplitude == pytest.approx(0.5, rel=0.01)


def test_stereo_is_the_channel_mean(tmp_path):
    left, right = sine(300.0, 0.4, 48_000), sine(700.0, 0.2, 48_000)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), 48_000, subtype="FLOAT")
    clip = load_audio(path)
    assert clip.original.shape == (2, 48_000) and clip.original_rate == 48_000
    spectrum = np.abs(np.fft.rfft(clip.samples * np.hanning(16000)))  # 1 Hz bins
    window_gain = np.hanning(16000).sum() / 2
    assert spectrum[300] / window_gain == pytest.approx(0.2, rel=0.02)  # 0.4 / 2
    assert spectrum[700] / window_gain == pytest.approx(0.1, rel=0.02)  # 0.2 / 2


def test_tuple_at_16k_is_used_as_given():
    samples = 0.01 * sine(200.0, 1.0, 16_000)  # quiet: must not be normalised
    for waveform in (samples, torch.from_numpy(samples), samples[None], torch.from_numpy(samples)[None]):
        clip = load_audio((waveform, 16_000))
        assert np.array_equal(clip.samples, samples)
        assert clip.original_rate == 16_000 and clip.source == "<tensor>"


def test_tuple_and_comfy_dict_at_other_rates_match_the_file_path(tmp_path):
    stereo = speech_like_stereo(1.0, 48_000)
    path = tmp_path / "s.wav"
    soundfile.write(path, stereo.T, 48_000, subtype="FLOAT")
    from_file = load_audio(path)
    from_tuple = load_audio((torch.from_numpy(stereo), 48_000))
    batch = torch.stack([torch.from_numpy(stereo), torch.zeros_like(torch.from_numpy(stereo))])
    from_dict = load_audio({"waveform": batch, "sample_rate": 48_000})
    assert np.array_equal(from_tuple.samples, from_file.samples)
    assert np.array_equal(from_dict.samples, from_file.samples)  # batch item 0
    assert np.array_equal(from_dict.original, stereo)
    assert load_audio(from_file) is from_file


def test_duration_trims_samples_and_original(source):
    source_path, stereo, reference = source
    clip = load_audio(source_path, duration=1.0)
    assert len(clip.samples) == 16_000 and np.array_equal(clip.samples, reference[:16_000])
    assert clip.original.shape == (2, SOURCE_RATE) and np.array_equal(clip.original, stereo[:, :SOURCE_RATE])
    assert len(load_audio(source_path, duration=2.45).samples) == len(reference)  # within 0.1 s: whole audio
    with pytest.raises(ParameterError, match="longer than the audio"):
        load_audio(source_path, duration=5.0)


def test_trimmed_cuts_both_signals():
    clip = AudioClip(np.ones(32_000, np.float32), np.ones((2, 96_000), np.float32), 48_000, "x")
    short = clip.trimmed(0.5)
    assert short.samples.shape == (8_000,) and short.original.shape == (2, 24_000)
    assert short.seconds == 0.5


def test_ten_minutes_load_fast_in_bounded_memory(tmp_path):
    rate, seconds = 22_050, 600
    path = tmp_path / "long.flac"
    t = np.arange(rate * seconds, dtype=np.float32) / rate
    soundfile.write(path, 0.3 * np.sin(2 * np.pi * 220 * t), rate, subtype="PCM_16")
    del t
    tracemalloc.start()
    clip = load_audio(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(clip.samples) == 16_000 * seconds
    decoded_bytes = clip.original.nbytes + clip.samples.nbytes
    assert peak < 3 * decoded_bytes, f"peak {peak / 1e6:.0f} MB for {decoded_bytes / 1e6:.0f} MB of audio"


def test_real_speech_survives_aac(tmp_path):
    """The shipped example clip (espeak-ng speech, 16 kHz, 6.5 s) through an M4A/AAC round trip."""
    wav = Path(__file__).resolve().parents[1] / "workflows" / "example_speech.wav"
    encode(wav, tmp_path / "speech.m4a", "-c:a", "aac")
    original = load_audio(wav)
    converted = load_audio(tmp_path / "speech.m4a")
    assert original.original_rate == 16_000 and original.seconds > 6
    assert abs(len(converted.samples) - len(original.samples)) <= ONE_MS_16K
    count = min(len(converted.samples), len(original.samples))
    assert np.corrcoef(converted.samples[:count], original.samples[:count])[0, 1] > 0.95


# ----------------------------------------------------------------------------------- bad audio

def write_wav(path, samples, rate=16_000, subtype="FLOAT"):
    soundfile.write(path, np.asarray(samples, np.float32), rate, subtype=subtype)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match=r"nope\.wav.*does not exist"):
        load_audio(tmp_path / "nope.wav")


def test_folder_instead_of_file(tmp_path):
    folder = tmp_path / "voice.wav"
    folder.mkdir()
    with pytest.raises(AudioError, match=r"voice\.wav.*not a file"):
        load_audio(folder)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "blank.mp3"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match=r"blank\.mp3.*empty"):
        load_audio(path)


@pytest.mark.parametrize("name, content", [
    ("noise.wav", np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes()),
    ("notes.mp3", b"this is a text file, not audio\n" * 50),
])
def test_undecodable_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AudioError, match=rf"{name.replace('.', '[.]')}.*cannot be decoded"):
        load_audio(path)


def test_truncated_file(tmp_path, source):
    source_path, _, _ = source
    path = tmp_path / "cut.m4a"
    encode(source_path, path, "-c:a", "aac")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(AudioError, match=r"cut\.m4a.*cannot be decoded"):
        load_audio(path)


def test_wav_without_samples(tmp_path):
    path = write_wav(tmp_path / "nothing.wav", np.zeros(0))
    with pytest.raises(AudioError, match=r"nothing\.wav.*no samples"):
        load_audio(path)


def test_silent_file(tmp_path):
    path = write_wav(tmp_path / "quiet.wav", np.full(16_000, 5e-5))
    with pytest.raises(AudioError, match=r"quiet\.wav.*silent"):
        load_audio(path)


def test_non_finite_samples(tmp_path):
    samples = sine(200.0, 0.5, 16_000)
    samples[100] = np.nan
    path = write_wav(tmp_path / "broken.wav", samples)
    with pytest.raises(AudioError, match=r"broken\.wav.*NaN"):
        load_audio(path)


def test_too_short(tmp_path):
    path = write_wav(tmp_path / "blip.wav", sine(200.0, 0.5, 16_000, seconds=0.1))
    with pytest.raises(AudioError, match=r"blip\.wav.*0\.100 s.*at least 0\.2 s"):
        load_audio(path)


def test_bad_in_memory_inputs():
    with pytest.raises(AudioError, match="samples, channels"):
        load_audio((np.zeros((16_000, 2), np.float32), 16_000))
    for rate in (0, -16_000, 16_000.5, float("nan"), "16000"):
        with pytest.raises(AudioError, match="sample rate"):
            load_audio((sine(200.0, 0.5, 16_000), rate))
    with pytest.raises(AudioError, match=r"\[batch, channels, samples\]"):
        load_audio({"waveform": torch.zeros(16_000), "sample_rate": 16_000})
    with pytest.raises(AudioError, match="silent"):
        load_audio({"waveform": torch.zeros(1, 1, 16_000), "sample_rate": 16_000})
    with pytest.raises(AudioError, match="unsupported audio input"):
        load_audio(12345)


def test_implausible_sample_rates_are_refused():
    import numpy as np

    from sonic.inputs.audio import load_audio
    from sonic.errors import AudioError

    with pytest.raises(AudioError, match="not plausible"):
        load_audio((np.ones(10, np.float32), 1))
    with pytest.raises(AudioError, match="not plausible"):
        load_audio((np.ones(16000, np.float32), 10_000_000))
