"""SonicConfig defaults are the official `config/inference/sonic.yaml` + `demo.py` values (SPEC 1.1, 1.2),
and a config is a value: changing it for one run never changes it for another."""

from __future__ import annotations

import dataclasses

import pytest

from sonic import config as constants
from sonic.config import SonicConfig
from sonic.errors import ParameterError, SonicError

# SonicConfig field -> (official yaml key or demo.py argument, official value).
OFFICIAL = {
    "inference_steps": ("num_inference_steps / process(inference_steps=25)", 25),
    "frames_per_window": ("n_sample_frames", 25),
    "fps": ("fps", 12.5),
    "decode_chunk_size": ("decode_chunk_size", 8),
    "dynamic_scale": ("motion_bucket_scale / process(dynamic_scale=1.0)", 1.0),
    "face_mask_area": ("area", 1.1),
    "window_overlap": ("overlap", 0),
    "shift_offset": ("shift_offset", 7),
    "min_appearance_guidance": ("min_appearance_guidance_scale", 2.0),
    "max_appearance_guidance": ("max_appearance_guidance_scale", 2.0),
    "audio_guidance": ("audio_guidance_scale", 7.5),
    "i2i_noise_strength": ("i2i_noise_strength", 1.0),
    "ip_audio_scale": ("ip_audio_scale", 1.0),
    "noise_aug_strength": ("noise_aug_strength", 0.0),
    "interpolate": ("use_interframe", True),
    "seed": ("seed", 72589),
    "min_resolution": ("demo.py process(min_resolution=512)", 512),
    "expand_ratio": ("demo.py preprocess(expand_ratio=0.5)", 0.5),
    "crop": ("gradio_app.py always crops", True),
    # Ours: 1.0 leaves the official motion bucket as it is.
    "motion_scale": ("(ours) extra motion multiplier", 1.0),
}


@pytest.mark.parametrize("field", sorted(OFFICIAL))
def test_default_equals_the_official_value(field):
    key, value = OFFICIAL[field]
    actual = getattr(SonicConfig(), field)
    assert actual == value and type(actual) is type(value), f"{field} (official {key}): {actual!r}, expected {value!r}"


def test_every_field_is_covered_or_deliberately_ours():
    """A new setting must be added to OFFICIAL (or here) with its reason, so no default drifts unseen."""
    ours = {"max_pixels", "max_image_pixels", "max_audio_seconds"}  # safety caps the official code does not have
    assert {f.name for f in dataclasses.fields(SonicConfig)} == set(OFFICIAL) | ours


def test_derived_defaults():
    config = SonicConfig()
    assert config.run_steps == 25  # all 25 steps from sigma_max (strength 1.0)
    # frame_num 10000 silently cut the official audio at 400 s; ours uses it all unless asked.
    assert config.max_audio_seconds is None
    assert config.validate() is config


def test_model_constants_match_the_release():
    """Facts of the weights (SPEC 2.3, 3): `step` 2, 640-sample audio frames, 30 s Whisper chunks, CLIP stats."""
    assert constants.SAMPLE_RATE == 16_000
    assert constants.SAMPLES_PER_AUDIO_FRAME == 640
    assert constants.AUDIO_FRAMES_PER_GENERATED_FRAME == 2
    assert constants.SAMPLE_RATE / constants.SAMPLES_PER_AUDIO_FRAME / constants.AUDIO_FRAMES_PER_GENERATED_FRAME \
        == SonicConfig().fps
    assert constants.WHISPER_CHUNK_SAMPLES == 750 * 640 == 480_000
    assert (constants.TOKEN_WINDOW, constants.TOKEN_WINDOW_PAD) == (10, (4, 6))
    assert (constants.BUCKET_WINDOW, constants.BUCKET_WINDOW_PAD) == (50, (24, 26))
    assert constants.VAE_SCALING_FACTOR == 0.18215
    assert constants.CLIP_SIZE == 224
    assert constants.CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert constants.CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


def test_replace_returns_a_new_config_and_leaves_the_original_alone():
    original = SonicConfig()
    changed = original.replace(seed=1, inference_steps=3, fps=25.0)
    assert changed is not original
    assert (changed.seed, changed.inference_steps, changed.fps) == (1, 3, 25.0)
    assert (original.seed, original.inference_steps, original.fps) == (72589, 25, 12.5)
    assert original == SonicConfig()  # a later run still starts from the official values


def test_a_config_cannot_be_changed_in_place():
    config = SonicConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1
    assert config.seed == 72589 and SonicConfig().seed == 72589


def test_configs_hold_no_shared_mutable_values():
    """Every field is an immutable value, so two configs can never alias a list or dict."""
    first, second = SonicConfig(), SonicConfig()
    assert first is not second and first == second and hash(first) == hash(second)
    for f in dataclasses.fields(SonicConfig):
        value = getattr(first, f.name)
        assert value is None or isinstance(value, (bool, int, float, str, tuple)), f"{f.name} is {type(value).__name__}"


def test_replace_refuses_unknown_names_and_bad_values_without_changing_anything():
    config = SonicConfig()
    with pytest.raises(ParameterError, match=r"unknown setting.*'sed'.*valid:.*'seed'"):
        config.replace(sed=1)
    with pytest.raises(SonicError, match="shift_offset must be between 0 and 1000 frames, got -1"):
        config.replace(shift_offset=-1)
    assert config == SonicConfig()


def test_every_range_is_enforced_at_both_ends_and_the_defaults_lie_inside():
    from sonic.config import RANGES

    config = SonicConfig()
    for name, span in RANGES.items():
        assert span.contains(getattr(config, name)), name
        step = 1 if isinstance(span.low, int) else 1e-3
        for bad in (span.low - step, span.high + step):
            with pytest.raises(ParameterError, match=f"{name} must be {span.describe()}"):
                config.replace(**{name: type(span.low)(bad)})
