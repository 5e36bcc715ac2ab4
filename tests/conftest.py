"""Shared test helpers: fixture paths, golden loading and peak-relative comparison."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The ComfyUI server helpers are a plugin of the ComfyUI tests: let pytest rewrite their asserts.
pytest.register_assert_rewrite("comfyui_server")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "golden"
MANIFESTS = FIXTURES / "checkpoint_manifests"
SVD_CONFIGS = FIXTURES / "svd_configs"


def load_golden(*parts: str) -> dict:
    """Tensors of a golden safetensors file, cloned (the stored ones are not 64-byte aligned)."""
    from safetensors.torch import load_file

    return {k: v.clone() for k, v in load_file(str(GOLDEN.joinpath(*parts))).items()}


def assert_close_peak(actual, expected, rel: float, what: str = "") -> None:
    """|actual - expected| <= rel * peak(|expected|), the tolerance rule of golden/README.md."""
    import torch

    actual = torch.as_tensor(actual).detach().float().cpu()
    expected = torch.as_tensor(expected).detach().float().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    peak = expected.abs().max().item() or 1.0
    err = (actual - expected).abs().max().item()
    assert err <= rel * peak, f"{what}: max abs error {err:.3g} > {rel:g} x peak {peak:.3g}"


@pytest.fixture(scope="session")
def torch_threads():
    import torch

    torch.set_num_threads(2)
    return 2


# ---------------------------------------------------------------- shared media and models
SR = 16_000
FACE = (18.0, 20.0, 54.0, 60.0)  # face box of the `portrait` fixture, in its pixels


def speech_like(seconds: float, sr: int = SR, seed: int = 0):
    """A voiced, syllable-modulated float32 signal: enough structure for Whisper features to vary."""
    import numpy as np

    t = np.arange(int(round(seconds * sr))) / sr
    rng = np.random.default_rng(seed)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t) ** 2
    voice = 0.3 * np.sin(2 * np.pi * 180 * t) + 0.1 * np.sin(2 * np.pi * 360 * t + 0.4)
    return ((voice + 0.01 * rng.standard_normal(t.size)) * envelope).astype(np.float32)


@pytest.fixture(scope="session")
def portrait():
    """A 72x80 RGB picture (the smallest size the generation issue requires to work)."""
    import numpy as np

    rng = np.random.default_rng(3)
    img = np.full((80, 72, 3), 90, np.uint8)
    img[20:60, 18:54] = (200, 160, 140)  # a face-coloured block
    return np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """A complete tiny model folder (official layout) holding the golden fixtures' weights (so that
    tests can compare with the goldens; the default zoo, from seeds, has the same keys and shapes)."""
    from sonic.tools.zoo import write_tiny_zoo

    return write_tiny_zoo(tmp_path_factory.mktemp("zoo") / "checkpoints", layout="official", fixtures_dir=GOLDEN)
