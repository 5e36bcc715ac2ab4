"""The tiny models' sizes (sonic.tools.tiny_configs) and seeded weights (sonic.tools.tiny_weights)
are those the golden fixtures recorded, so the seeded zoo of an installed package and the tests'
golden zoo are the same networks."""

from __future__ import annotations

import json

import pytest
from helpers import GOLDEN

from sonic.tools import tiny_configs


def _golden_config(*parts: str) -> dict:
    return json.loads(GOLDEN.joinpath(*parts, "config.json").read_text())


def test_derived_configs_equal_the_golden_fixtures_configs():
    audio = _golden_config("audio_features")
    assert tiny_configs.unet_config() == _golden_config("unet_forward")["unet_config"]
    assert tiny_configs.vae_config() == _golden_config("vae")["config"]
    assert tiny_configs.whisper_config() == audio["whisper_config"]
    assert tiny_configs.whisper_feature_extractor() == audio["feature_extractor"]["kwargs"]
    assert tiny_configs.audio2token_kwargs() == _golden_config("audio2token")["constructor_kwargs"]
    assert tiny_configs.audio2bucket_kwargs() == _golden_config("audio2bucket")["constructor_kwargs"]
    assert tiny_configs.rife_arguments()[0] == _golden_config("rife")["channel_width"]["used_c"]
    # The adapters' token count is the one the golden UNet was built for.
    assert _golden_config("unet_forward")["adapter"]["num_adapter_embeds"] == [tiny_configs.AUDIO_TOKENS]


def test_a_config_change_is_caught():
    """The comparison above is not vacuous: one shrunken number changed makes the configs differ."""
    original = tiny_configs.UNET_HEAD_DIM
    try:
        tiny_configs.UNET_HEAD_DIM = 8
        assert tiny_configs.unet_config() != _golden_config("unet_forward")["unet_config"]
    finally:
        tiny_configs.UNET_HEAD_DIM = original


@pytest.fixture(scope="module")
def seeded():
    from sonic.tools.tiny_weights import seeded_weights

    return seeded_weights()


def test_seeded_weights_have_the_golden_keys_shapes_and_dtypes(seeded):
    from sonic.tools.tiny_weights import ROLES, golden_weights

    golden = golden_weights(GOLDEN)
    assert set(seeded) == set(golden) == set(ROLES)
    for role in ROLES:
        got = {k: (tuple(v.shape), v.dtype) for k, v in seeded[role].items()}
        expected = {k: (tuple(v.shape), v.dtype) for k, v in golden[role].items()}
        assert got == expected, role


def test_seeded_weights_are_reproducible_finite_and_not_the_golden_ones(seeded):
    import torch

    from sonic.tools.tiny_weights import golden_weights, seeded_weights

    again = seeded_weights()
    golden = golden_weights(GOLDEN)
    for role, state in seeded.items():
        assert all(torch.equal(value, again[role][key]) for key, value in state.items()), role
        assert all(torch.isfinite(value).all() for value in state.values()), role
    assert not torch.equal(seeded["unet"]["conv_in.weight"], golden["unet"]["conv_in.weight"])
