"""The golden tolerance table (helpers.GOLDEN_TOLERANCES) is tight: every tolerance is below a 1e-5
relative change, and on the stored golden values such a change fails the comparison.

Every `assert_close_to_golden` call also checks this on our computed values (a relaxed test still
fails when its result moves by 1e-5 relative); this file covers the table itself.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import (GOLDEN, GOLDEN_TOLERANCES, SENSITIVITY, Tolerance, assert_close_to_golden, golden_error,
                     golden_tolerance, load_golden)

# One stored golden tensor per table entry: (file under golden/, tensor name).
REPRESENTATIVE = {
    "scheduler/sigmas": ("scheduler/schedules.safetensors", "n25_s1.0__sigmas"),
    "scheduler": ("scheduler/schedules.safetensors", "n25_s1.0__timesteps"),
    "audio_features/mel_filters": ("audio_features/log_mel.safetensors", "mel_filters"),
    "audio_features/log_mel": ("audio_features/log_mel.safetensors", "log_mel"),
    "audio_chunking/log_mel": ("audio_chunking/outputs.safetensors", "log_mel_2936_3000"),
    "audio_features": ("audio_features/whisper_outputs.safetensors", "hidden_states_stacked"),
    "audio_chunking": ("audio_chunking/outputs.safetensors", "hidden_2936_3000"),
    "audio_chunking/hidden_sum": None,  # a number in audio_chunking/config.json
    "audio2token": ("audio2token/outputs.safetensors", "tokens_call"),
    "audio2bucket": ("audio2bucket/outputs.safetensors", "out_call"),
    "unet_forward": ("unet_forward/sampling_outputs.safetensors", "noise_pred"),
    "vae": ("vae/outputs.safetensors", "latent_mode"),
    "rife": ("rife/outputs.safetensors", "middle_64x64"),
}


def stored(entry: str) -> torch.Tensor:
    if REPRESENTATIVE[entry] is None:
        stats = json.loads((GOLDEN / "audio_chunking" / "config.json").read_text())["stats"]
        return torch.tensor(stats["hidden_sum_all"], dtype=torch.float64)
    file, key = REPRESENTATIVE[entry]
    return load_golden(*file.split("/"))[key]


def test_every_table_entry_has_a_representative():
    assert set(REPRESENTATIVE) == set(GOLDEN_TOLERANCES)


@pytest.mark.parametrize("entry", sorted(GOLDEN_TOLERANCES))
def test_tolerance_is_below_the_sensitivity(entry):
    tolerance = GOLDEN_TOLERANCES[entry]
    if tolerance.ulps is not None:
        # k ulps of x are at most k * 2^-23 * |x|
        assert tolerance.ulps * 2.0 ** -23 < SENSITIVITY / 2, entry
    else:
        assert tolerance.rel <= SENSITIVITY * 0.8, entry


@pytest.mark.parametrize("entry", sorted(GOLDEN_TOLERANCES))
def test_a_relative_change_of_1e_5_fails_on_the_stored_values(entry):
    expected = stored(entry)
    name = f"{entry} (stored)"
    assert golden_tolerance(name) == GOLDEN_TOLERANCES[entry]
    assert_close_to_golden(expected.clone(), expected, name)
    for sign in (1, -1):
        with pytest.raises(AssertionError, match="x its tolerance"):
            assert_close_to_golden(expected.double() * (1 + sign * SENSITIVITY), expected, name)


def test_a_single_changed_value_fails():
    """A local bug (one wrong element) is caught, not averaged away."""
    expected = stored("unet_forward")
    changed = expected.clone()
    changed.view(-1)[1234] += SENSITIVITY * expected.abs().max()
    with pytest.raises(AssertionError, match="x its tolerance"):
        assert_close_to_golden(changed, expected, "unet_forward/noise_pred")


def test_ulps_are_counted_per_element():
    sigmas = stored("scheduler/sigmas")
    small = sigmas.clone()
    small[-2] = torch.nextafter(small[-2], torch.tensor(1.0))  # the smallest sigma, 1 ulp up: allowed
    assert golden_error(small, sigmas, "scheduler/sigmas") == pytest.approx(0.5)
    small[-2] = sigmas[-2] * (1 + SENSITIVITY)  # invisible to a peak-relative rule on a 700 -> 0.002 ramp
    with pytest.raises(AssertionError):
        assert_close_to_golden(small, sigmas, "scheduler/sigmas")


def test_a_loose_tolerance_is_refused_on_real_values(monkeypatch):
    monkeypatch.setitem(GOLDEN_TOLERANCES, "unet_forward", Tolerance(rel=1e-4))
    expected = stored("unet_forward")
    with pytest.raises(AssertionError, match="would not notice"):
        assert_close_to_golden(expected.clone(), expected, "unet_forward/noise_pred")


def test_names_fall_back_to_their_folder_and_unknown_names_are_refused():
    assert golden_tolerance("audio_features/log_mel 0:64") == GOLDEN_TOLERANCES["audio_features/log_mel"]
    assert golden_tolerance("audio_features/hidden states sdpa") == GOLDEN_TOLERANCES["audio_features"]
    with pytest.raises(KeyError, match="no golden tolerance"):
        golden_tolerance("window_layout/indices")
    with pytest.raises(AssertionError, match="shape"):
        assert_close_to_golden(torch.zeros(2), torch.zeros(3), "vae/latent")
