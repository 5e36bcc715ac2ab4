"""Issue 12: a light, seeded byte-level mutation fuzz of every loader (not the pipeline).

Each valid file (WAV, MP3, PNG, JPEG, MP4, safetensors) is mutated a few hundred times (byte
flips, overwritten runs, cuts, duplicated runs, huge length fields); every outcome must be a
clean load or one of our `SonicError`s, each within a time bound."""

from __future__ import annotations

import io
import struct
import time

import numpy as np
import pytest

from hostile_helpers import png_bytes, portrait, speech

MUTATIONS = 200
SLOW_MUTATIONS = 60  # MP4: every load spawns ffmpeg
TIME_BOUND = 5.0  # seconds one load may take


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    kind = rng.integers(6)
    at = int(rng.integers(len(buf)))
    if kind == 0:  # flip a few bytes
        for _ in range(int(rng.integers(1, 8))):
            i = int(rng.integers(len(buf)))
            buf[i] ^= 1 << int(rng.integers(8))
    elif kind == 1:  # overwrite a run with random bytes
        n = int(rng.integers(1, 64))
        buf[at:at + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    elif kind == 2:  # cut the file
        del buf[at:]
    elif kind == 3:  # duplicate a run
        n = int(rng.integers(1, 256))
        buf[at:at] = buf[at:at + n]
    elif kind == 4:  # a huge 32-bit value (sizes, counts, dimensions)
        buf[at:at + 4] = struct.pack("<I", int(rng.choice([0xFFFFFFFF, 0x7FFFFFFF, 0x10000000])))
    else:  # a big 64-bit little-endian value at the start (safetensors header length)
        buf[0:8] = struct.pack("<Q", int(rng.integers(1, 1 << 62)))
    return bytes(buf)


def fuzz(tmp_path, name: str, data: bytes, load, count: int, seed: int) -> dict:
    from sonic.errors import SonicError

    rng = np.random.default_rng(seed)
    path = tmp_path / name
    outcomes = {"loaded": 0, "refused": 0}
    for index in range(count):
        mutated = mutate(data, rng)
        path.write_bytes(mutated)
        started = time.monotonic()
        try:
            load(path)
            outcomes["loaded"] += 1
        except SonicError:
            outcomes["refused"] += 1
        except Exception as exc:  # anything else escapes as a traceback: a finding
            (tmp_path / f"finding-{index}-{name}").write_bytes(mutated)
            raise AssertionError(f"mutation {index} of {name} (seed {seed}) raised {type(exc).__name__}: {exc}")
        elapsed = time.monotonic() - started
        assert elapsed < TIME_BOUND, f"mutation {index} of {name} took {elapsed:.1f} s"
    assert outcomes["refused"] > 0  # the fuzz reached the checks
    print(name, outcomes)
    return outcomes


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    import soundfile as sf
    from PIL import Image

    root = tmp_path_factory.mktemp("samples")
    wav = io.BytesIO()
    sf.write(wav, speech(0.5), 16_000, format="WAV", subtype="PCM_16")
    mp3 = io.BytesIO()
    sf.write(mp3, speech(0.5), 16_000, format="MP3")
    jpeg = io.BytesIO()
    Image.fromarray(portrait()).save(jpeg, format="JPEG")
    return {"wav": wav.getvalue(), "mp3": mp3.getvalue(), "png": png_bytes(portrait()), "jpg": jpeg.getvalue(),
            "root": root}


def test_fuzz_wav_and_mp3(tmp_path, samples):
    from sonic.inputs.audio import load_audio

    for seed, (name, data) in enumerate((("a.wav", samples["wav"]), ("a.mp3", samples["mp3"]))):
        fuzz(tmp_path, name, data, load_audio, MUTATIONS, seed)


def test_fuzz_png_and_jpeg(tmp_path, samples):
    from sonic.inputs.portrait import load_image

    for seed, (name, data) in enumerate((("a.png", samples["png"]), ("a.jpg", samples["jpg"]))):
        fuzz(tmp_path, name, data, load_image, MUTATIONS, 10 + seed)


def test_fuzz_safetensors(tmp_path):
    import torch
    from safetensors.torch import save as save_bytes

    from sonic.weights.reading import read_state_dict

    data = save_bytes({"w": torch.randn(8, 8), "b": torch.zeros(8), "h": torch.ones(3, dtype=torch.float16)})
    fuzz(tmp_path, "m.safetensors", data, lambda p: read_state_dict(p, what="fuzz"), MUTATIONS, 20)


def test_fuzz_mp4(tmp_path):
    from sonic.media.probe import probe, read_video
    from sonic.media.video import write_mp4

    clip = tmp_path / "clip.mp4"
    frames = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    write_mp4(clip, frames, fps=25, audio=speech(0.24, 16_000), sample_rate=16_000, preset="ultrafast")
    data = clip.read_bytes()

    def load(path):
        probe(path)
        read_video(path, max_seconds=1.0)

    fuzz(tmp_path, "m.mp4", data, load, SLOW_MUTATIONS, 30)
