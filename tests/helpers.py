"""Shared test helpers: fixture paths, golden loading, the golden tolerance table and test media.

Tests import these with `from helpers import ...` (pytest puts tests/ on sys.path); pytest fixtures
stay in conftest.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "golden"
MANIFESTS = FIXTURES / "checkpoint_manifests"
SVD_CONFIGS = FIXTURES / "svd_configs"


def load_golden(*parts: str) -> dict:
    """Tensors of a golden safetensors file, cloned (the stored ones are not 64-byte aligned)."""
    from safetensors.torch import load_file

    return {k: v.clone() for k, v in load_file(str(GOLDEN.joinpath(*parts))).items()}


def golden_unet_state() -> dict:
    """The tiny golden UNet's 440 tensors (official `unet.pth` key names), merged from the 4 shards."""
    import json

    index = json.loads((GOLDEN / "unet_forward" / "weights.safetensors.index.json").read_text())
    state = {}
    for shard in sorted(set(index["weight_map"].values())):
        state.update(load_golden("unet_forward", shard))
    assert set(state) == set(index["weight_map"]) and len(state) == 440
    return state


# ------------------------------------------------------------------------ comparison with goldens
# The goldens were made by the official code on another machine. Float results of ours differ from
# them by a few float32 ulps on other CPUs (vectorised log/exp, FFT and matmul kernels differ), so
# they are compared with the tolerances below, stated once here and in fixtures/golden/README.md.
# Every tolerance is well below a 1e-5 relative change: `assert_close_to_golden` also checks on the
# real values that such a change would be caught (tests/test_golden_tolerances.py covers the table).
SENSITIVITY = 1e-5  # a relative change of the result every golden comparison must detect


@dataclass(frozen=True)
class Tolerance:
    """`rel`: max |actual - expected| <= rel * peak(|expected|) (one scale for the whole tensor).
    `ulps`: every element within that many float32 ulps of its own expected value (for tables
    that span decades, such as the sigma ramp 700 -> 0.002, where a peak-relative rule is blind)."""

    rel: float | None = None
    ulps: int | None = None


# name -> tolerance; see golden_tolerance for the lookup. The largest differences measured on an
# AVX-512 CPU with torch 2.14.1 against the goldens (made on an AVX2 CPU, torch 2.13) are in
# fixtures/golden/README.md ("Tolerances"); each tolerance leaves 2-7x room above them.
GOLDEN_TOLERANCES: dict[str, Tolerance] = {
    "scheduler/sigmas": Tolerance(ulps=2),  # float64 maths, one cast: measured 0
    "scheduler": Tolerance(rel=1e-6),  # timesteps (float32 log), preconditioning, Euler step, add_noise: 1.5e-7
    "audio_features/mel_filters": Tolerance(rel=1e-6),  # float64 maths, one cast: 0
    "audio_features/log_mel": Tolerance(rel=8e-6),  # STFT + matmul + log10 of weak bins: 3.5e-6
    "audio_chunking/log_mel": Tolerance(rel=8e-6),  # 3.8e-6
    "audio_features": Tolerance(rel=5e-6),  # Whisper hidden states and the windows cut from them: 1.0e-6
    "audio_chunking": Tolerance(rel=5e-6),  # 1.7e-6
    "audio_chunking/hidden_sum": Tolerance(rel=1e-6),  # the sum of all hidden states, relative to itself: 2.2e-8
    "audio2token": Tolerance(rel=5e-6),  # 5.5e-7
    "audio2bucket": Tolerance(rel=5e-6),  # 3.3e-7
    "unet_forward": Tolerance(rel=5e-6),  # 1.1e-6 (the README: thread count 1e-6, explicit softmax 1.1e-6)
    "vae": Tolerance(rel=5e-6),  # 9.3e-7
    "rife": Tolerance(rel=5e-6),  # 0 (the README: thread count about 1e-6)
}


def golden_tolerance(name: str) -> Tolerance:
    """Tolerance of `name` = "folder/quantity details": "folder/quantity" if listed, else "folder"."""
    key = name.split(" ", 1)[0]
    while key not in GOLDEN_TOLERANCES:
        if "/" not in key:
            raise KeyError(f"no golden tolerance for {name!r}; add it to GOLDEN_TOLERANCES")
        key = key.rsplit("/", 1)[0]
    return GOLDEN_TOLERANCES[key]


def _float32_ulp(values):
    """Spacing of float32 at |values| (the smallest subnormal at 0)."""
    import torch

    magnitude = values.abs().float()
    return (torch.nextafter(magnitude, torch.tensor(float("inf"))) - magnitude).double()


def golden_error(actual, expected, name: str, peak: float | None = None) -> float:
    """The difference in units of the golden's tolerance: <= 1 passes. `peak` overrides
    max|expected| as the scale of a `rel` tolerance (for statistics such as a mean)."""
    import torch

    actual = torch.as_tensor(actual).detach().cpu().double()
    expected = torch.as_tensor(expected).detach().cpu()
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    tolerance = golden_tolerance(name)
    difference = (actual - expected.double()).abs()
    if tolerance.ulps is not None:
        return (difference / (tolerance.ulps * _float32_ulp(expected))).max().item()
    scale = expected.abs().max().item() if peak is None else peak
    worst = difference.max().item()
    return worst / (tolerance.rel * scale) if scale else float("inf") if worst else 0.0


def assert_close_to_golden(actual, expected, name: str, peak: float | None = None) -> None:
    """`actual` (ours) is within the tolerance of golden `name`, and a SENSITIVITY relative change
    of `actual` would not be: the comparison can fail on a real change, on these very values."""
    import torch

    error = golden_error(actual, expected, name, peak)
    _report(name, actual, expected, peak)
    tolerance = golden_tolerance(name)
    assert error <= 1.0, f"{name}: difference {error:.3g} x its tolerance {tolerance} (fixtures/golden/README.md)"
    perturbed = torch.as_tensor(actual).detach().cpu().double() * (1 + SENSITIVITY)
    assert not perturbed.any() or golden_error(perturbed, expected, name, peak) > 1.0, \
        f"{name}: the tolerance {tolerance} would not notice a {SENSITIVITY:g} relative change"


def _report(name, actual, expected, peak) -> None:
    """With SONIC_GOLDEN_REPORT=<file>, append the measured difference (how the README's table was made)."""
    path = os.environ.get("SONIC_GOLDEN_REPORT")
    if not path:
        return
    import torch

    actual = torch.as_tensor(actual).detach().cpu().double()
    expected = torch.as_tensor(expected).detach().cpu()
    difference = (actual - expected.double()).abs()
    scale = expected.abs().max().item() if peak is None else peak
    ulps = (difference / _float32_ulp(expected)).max().item()
    peak_ulp = _float32_ulp(torch.tensor(scale, dtype=torch.float32)).item()
    with open(path, "a") as report:
        report.write(f"{name}\trel {difference.max().item() / (scale or 1.0):.3g}\t"
                     f"ulps_of_peak {difference.max().item() / peak_ulp:.3g}\tulps_elementwise {ulps:.3g}\n")


def assert_close_peak(actual, expected, rel: float, what: str = "") -> None:
    """|actual - expected| <= rel * peak(|expected|): two computations of OURS (e.g. an optimised path
    against a plain one). Comparisons with the official goldens use `assert_close_to_golden`."""
    import torch

    actual = torch.as_tensor(actual).detach().float().cpu()
    expected = torch.as_tensor(expected).detach().float().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    peak = expected.abs().max().item() or 1.0
    err = (actual - expected).abs().max().item()
    assert err <= rel * peak, f"{what}: max abs error {err:.3g} > {rel:g} x peak {peak:.3g}"


# ---------------------------------------------------------------- shared media
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
