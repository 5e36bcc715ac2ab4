"""Shared test helpers: fixture paths, golden loading and peak-relative comparison."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
