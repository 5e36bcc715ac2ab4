"""audio2token / audio2bucket against the goldens and the real checkpoint manifests, and the batched conditioning."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import MANIFESTS, assert_close_peak, assert_close_to_golden, load_golden

from sonic.diffusion.conditioning import audio_conditioning
from sonic.errors import WeightsError
from sonic.models.audio_adapters import AudioToBucket, AudioToTokens

WHISPER_TINY_WIDTH = 384


@pytest.fixture(scope="module")
def token_model():
    return AudioToTokens.from_state_dict(load_golden("audio2token", "weights.safetensors"))


@pytest.fixture(scope="module")
def bucket_model():
    return AudioToBucket.from_state_dict(load_golden("audio2bucket", "weights.safetensors"), whisper_width=8)


def manifest(name: str) -> dict[str, tuple[int, ...]]:
    entries = json.loads((MANIFESTS / f"{name}.json").read_text())
    return {key: tuple(shape) for key, shape in entries.items() if key != "__meta__"}


def meta_state_dict(name: str) -> dict[str, torch.Tensor]:
    return {key: torch.empty(shape, device="meta") for key, shape in manifest(name).items()}


# ---------------------------------------------------------------------------------- audio2token

def test_audio2token_golden(token_model):
    inputs, outputs = load_golden("audio2token", "inputs.safetensors"), load_golden("audio2token", "outputs.safetensors")
    assert (token_model.channels, token_model.context_tokens, token_model.output_dim) == (8, 4, 12)
    with torch.no_grad():
        assert_close_to_golden(token_model(inputs["x_call"]), outputs["tokens_call"], "audio2token/tokens_call")
        assert_close_to_golden(token_model(inputs["x_batch"]), outputs["tokens_batch"], "audio2token/tokens_batch")
        null = token_model(inputs["x_zeros"])
    assert_close_to_golden(null, outputs["null_tokens"], "audio2token/null tokens")
    assert null.abs().max() > 0.1  # the null-audio tokens are not zero


def test_audio2token_full_size_matches_the_checkpoint_manifest():
    model = AudioToTokens.from_state_dict_shapes(meta_state_dict("audio2token"), device="meta")
    assert {key: tuple(value.shape) for key, value in model.state_dict().items()} == manifest("audio2token")
    assert (model.channels, model.context_tokens, model.output_dim) == (WHISPER_TINY_WIDTH, 32, 1024)
    meta = json.loads((MANIFESTS / "audio2token.json").read_text())["__meta__"]
    assert sum(p.numel() for p in model.parameters()) == meta["num_parameters"]


# --------------------------------------------------------------------------------- audio2bucket

def test_audio2bucket_golden(bucket_model):
    inputs, outputs = load_golden("audio2bucket", "inputs.safetensors"), load_golden("audio2bucket", "outputs.safetensors")
    assert (bucket_model.channels, bucket_model.clip_channels) == (8, 12)
    with torch.no_grad():
        call = bucket_model(inputs["x_call"], inputs["clip_call"])
        batch = bucket_model(inputs["x_batch"], inputs["clip_batch"])
    assert_close_to_golden(call, outputs["out_call"], "audio2bucket/out_call")
    assert_close_to_golden(batch, outputs["out_batch"], "audio2bucket/out_batch")
    assert_close_to_golden(call * 16 + 16, outputs["bucket_call"], "audio2bucket/bucket_call")


def test_audio2bucket_full_size_matches_the_checkpoint_manifest():
    model = AudioToBucket.from_state_dict_shapes(meta_state_dict("audio2bucket"), whisper_width=WHISPER_TINY_WIDTH,
                                                 device="meta")
    assert {key: tuple(value.shape) for key, value in model.state_dict().items()} == manifest("audio2bucket")
    assert (model.channels, model.clip_channels) == (WHISPER_TINY_WIDTH, 1024)
    meta = json.loads((MANIFESTS / "audio2bucket.json").read_text())["__meta__"]
    assert sum(p.numel() for p in model.parameters()) == meta["num_parameters"]


def test_wrong_adapter_weights_are_weights_errors():
    tokens = load_golden("audio2token", "weights.safetensors")
    with pytest.raises(WeightsError, match="unexpected"):
        AudioToTokens.from_state_dict({**tokens, "extra.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match="norm.weight"):
        AudioToTokens.from_state_dict({k: v for k, v in tokens.items() if not k.startswith("norm.")})
    with pytest.raises(WeightsError, match="not a multiple of 250"):
        AudioToTokens.from_state_dict_shapes(tokens, seq_len=10, blocks=5 * 5)
    buckets = load_golden("audio2bucket", "weights.safetensors")
    with pytest.raises(WeightsError, match="do not belong together"):
        AudioToBucket.from_state_dict(buckets, whisper_width=WHISPER_TINY_WIDTH)
    with pytest.raises(WeightsError, match="proj1.weight"):
        AudioToBucket.from_state_dict(tokens | {"proj1.weight": torch.zeros(0)}, whisper_width=8)
    with pytest.raises(WeightsError, match="audio2bucket"):
        AudioToBucket.from_state_dict(tokens, whisper_width=8)  # an audio2token file given as audio2bucket


# --------------------------------------------------------------------------------- conditioning

def test_conditioning_equals_the_per_frame_official_loop(token_model, bucket_model):
    windows = load_golden("audio_features", "frame_windows.safetensors")
    clip = load_golden("audio_features", "waveform.safetensors")["clip_embedding"]
    result = audio_conditioning(token_model, bucket_model, windows["audio_windows"], windows["bucket_windows"], clip,
                                batch_size=16)
    assert result.num_frames == 41
    assert result.tokens.shape == (41, 4, 12) and result.null_tokens.shape == (4, 12) and result.buckets.shape == (41, 2)
    assert_close_to_golden(result.tokens, windows["cond_audio_tokens"], "audio_features/tokens")
    assert_close_to_golden(result.null_tokens, windows["null_audio_tokens"], "audio_features/null tokens")
    assert_close_to_golden(result.buckets, windows["motion_buckets"][..., 0], "audio_features/buckets")


def test_conditioning_two_chunks(token_model, bucket_model):
    """Windows rebuilt by golden/audio_chunking's rule from its stored windows of frames 0-2 and 360-381."""
    outputs = load_golden("audio_chunking", "outputs.safetensors")
    clip = load_golden("audio_chunking", "inputs.safetensors")["clip_embedding"]
    result = audio_conditioning(token_model, bucket_model, outputs["audio_windows_sel"], outputs["bucket_windows_sel"],
                                clip, batch_size=4)
    assert_close_to_golden(result.tokens, outputs["cond_audio_tokens_sel"], "audio_chunking/tokens")
    assert_close_to_golden(result.buckets, outputs["motion_buckets_sel"][..., 0], "audio_chunking/buckets")
    assert_close_to_golden(result.null_tokens, outputs["null_audio_tokens"], "audio_chunking/null tokens")


@pytest.mark.parametrize("dynamic_scale, golden", [(1.0, "bucket_call_scaled_1p0"), (1.5, "bucket_call_scaled_1p5")])
def test_dynamic_scale_multiplies_both_buckets(token_model, bucket_model, dynamic_scale, golden):
    token_inputs = load_golden("audio2token", "inputs.safetensors")
    inputs, outputs = load_golden("audio2bucket", "inputs.safetensors"), load_golden("audio2bucket", "outputs.safetensors")
    result = audio_conditioning(token_model, bucket_model, token_inputs["x_call"][0], inputs["x_call"][0],
                                inputs["clip_call"], dynamic_scale=dynamic_scale)
    assert_close_to_golden(result.buckets, outputs[golden].reshape(1, 2), f"audio2bucket/{golden}")


def test_motion_scale_changes_only_the_motion_bucket(token_model, bucket_model):
    windows = load_golden("audio_features", "frame_windows.safetensors")
    clip = load_golden("audio_features", "waveform.safetensors")["clip_embedding"]
    args = (token_model, bucket_model, windows["audio_windows"], windows["bucket_windows"], clip)
    plain = audio_conditioning(*args, dynamic_scale=1.5)
    moved = audio_conditioning(*args, dynamic_scale=1.5, motion_scale=0.5)
    assert torch.allclose(moved.buckets[:, 0], plain.buckets[:, 0] * 0.5)
    assert torch.equal(moved.buckets[:, 1], plain.buckets[:, 1])
    assert torch.equal(moved.tokens, plain.tokens)


def test_batch_size_does_not_change_the_result(token_model, bucket_model):
    windows = load_golden("audio_features", "frame_windows.safetensors")
    clip = load_golden("audio_features", "waveform.safetensors")["clip_embedding"]
    args = (token_model, bucket_model, windows["audio_windows"], windows["bucket_windows"], clip)
    one, seven, all_at_once = (audio_conditioning(*args, batch_size=size) for size in (1, 7, 1000))
    for other in (seven, all_at_once):
        assert_close_peak(other.tokens, one.tokens, 1e-6, "tokens")
        assert_close_peak(other.buckets, one.buckets, 1e-6, "buckets")
