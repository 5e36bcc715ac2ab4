"""Whisper log-mel, encoder hidden states and per-frame windows against the official goldens.

golden/audio_features: 3.3 s, one Whisper chunk. golden/audio_chunking: 30.6 s, two chunks.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from helpers import GOLDEN, assert_close_to_golden, load_golden

from sonic.inputs.audio import frame_windows, log_mel, log_mel_chunk, mel_filters, num_chunks, whisper_hidden_states
from sonic.errors import WeightsError
from sonic.models.whisper import (build_whisper_encoder, encoder_hidden_states, encoder_state_dict,
                                  load_whisper_encoder)
from sonic.diffusion.timeline import Timeline

def whisper_config() -> dict:
    return json.loads((GOLDEN / "audio_features" / "config.json").read_text())["whisper_config"]


@pytest.fixture(scope="module")
def encoder():
    return load_whisper_encoder(whisper_config(), load_golden("audio_features", "whisper_weights.safetensors"))


@pytest.fixture(scope="module")
def waveform():
    return load_golden("audio_features", "waveform.safetensors")["waveform"]


@pytest.fixture(scope="module")
def long_waveform():
    """The 30.6 s signal of golden/audio_chunking, rebuilt from its stored tables."""
    tables = load_golden("audio_chunking", "inputs.safetensors")
    n = np.arange(489_600)
    samples = (tables["period"].numpy()[n % 17_000] * tables["env"].numpy()[n // 16_000]).astype(np.float32)
    expected = json.loads((GOLDEN / "audio_chunking" / "config.json").read_text())["waveform"]
    assert hashlib.sha256(samples.astype("<f4").tobytes()).hexdigest() == expected["sha256_of_float32_little_endian_bytes"]
    return samples


@pytest.fixture(scope="module")
def chunking():
    return load_golden("audio_chunking", "outputs.safetensors")


@pytest.fixture(scope="module")
def short_hidden(encoder, waveform):
    return whisper_hidden_states(encoder, waveform.numpy())


@pytest.fixture(scope="module")
def long_hidden(encoder, long_waveform):
    return whisper_hidden_states(encoder, long_waveform)


# ------------------------------------------------------------------------------------ log-mel

def test_mel_filter_bank_equals_whisper_extractor():
    expected = load_golden("audio_features", "log_mel.safetensors")["mel_filters"]
    assert_close_to_golden(mel_filters(), expected, "audio_features/mel_filters")


def test_log_mel_one_chunk(waveform):
    expected = load_golden("audio_features", "log_mel.safetensors")["log_mel"]
    actual = log_mel(waveform)
    assert actual.shape == (1, 80, 3000)
    assert_close_to_golden(actual, expected, "audio_features/log_mel")


def test_log_mel_two_chunks(long_waveform, chunking):
    actual = log_mel(long_waveform)
    assert actual.shape == (1, 80, 6000)
    for start, stop in ((0, 64), (2936, 3000), (3000, 3064), (5936, 6000)):
        assert_close_to_golden(actual[..., start:stop], chunking[f"log_mel_{start}_{stop}"],
                               f"audio_chunking/log_mel {start}:{stop}")
    stats = json.loads((GOLDEN / "audio_chunking" / "config.json").read_text())["stats"]
    for index in range(2):
        chunk = actual[..., 3000 * index:3000 * (index + 1)].double()
        # each chunk has its own clamp (min = max - 2); the mean is held to the tolerance of one value
        got = torch.stack([chunk.min(), chunk.max(), chunk.mean()])
        expected = torch.tensor([stats[f"log_mel_min_chunk{index}"], stats[f"log_mel_max_chunk{index}"],
                                 stats[f"log_mel_sum_chunk{index}"] / chunk.numel()], dtype=torch.float64)
        assert_close_to_golden(got, expected, f"audio_chunking/log_mel chunk {index} min, max, mean")


def test_log_mel_chunk_count():
    for samples, chunks in ((3200, 1), (480_001, 2)):
        assert log_mel(np.full(samples, 0.1, np.float32)).shape == (1, 80, 3000 * chunks)
    assert [num_chunks(s) for s in (1, 480_000, 480_001, 960_000, 960_001, 9_600_000)] == [1, 1, 2, 2, 3, 20]
    with pytest.raises(ValueError):
        log_mel_chunk(torch.zeros(480_001))


# ----------------------------------------------------------------------------- Whisper encoder

def test_hidden_states_one_chunk(short_hidden, waveform):
    expected = load_golden("audio_features", "whisper_outputs.safetensors")["hidden_states_stacked"]
    timeline = Timeline.from_samples(waveform.numel())
    assert short_hidden.shape == (1, 2 * timeline.audio_frames, 5, 8) == (1, 164, 5, 8)
    assert short_hidden.dtype == torch.float32
    assert_close_to_golden(short_hidden, expected[:, :164], "audio_features/hidden states")


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_attention_implementations_match_the_golden(implementation):
    """sdpa is our default; eager is the explicit-softmax reference. Both within the golden tolerance."""
    encoder = load_whisper_encoder(whisper_config(), load_golden("audio_features", "whisper_weights.safetensors"),
                                   attn_implementation=implementation)
    mel = load_golden("audio_features", "log_mel.safetensors")["log_mel"]
    expected = load_golden("audio_features", "whisper_outputs.safetensors")["hidden_states_stacked"]
    actual = encoder_hidden_states(encoder, mel)
    assert_close_to_golden(actual, expected, f"audio_features/hidden states {implementation}")


def test_hidden_states_two_chunks(encoder, long_hidden, long_waveform, chunking):
    assert long_hidden.shape == (1, 1530, 5, 8)
    # steps 1468..1529 straddle the chunk boundary (positions restart at 1500)
    assert_close_to_golden(long_hidden[:, 1468:], chunking["hidden_1468_1532"][:, :62], "audio_chunking/boundary")
    # the end of chunk 1 (beyond the truncation) from a direct encoder call on that chunk
    second = encoder_hidden_states(encoder, log_mel_chunk(long_waveform[480_000:]))
    assert_close_to_golden(second[:, 1436:], chunking["hidden_2936_3000"], "audio_chunking/chunk 1 end")
    stats = json.loads((GOLDEN / "audio_chunking" / "config.json").read_text())["stats"]
    total = long_hidden[:, :1500].double().sum() + second.double().sum()
    assert_close_to_golden(total, torch.tensor(stats["hidden_sum_all"], dtype=torch.float64), "audio_chunking/hidden_sum")


def test_encoder_state_dict_accepts_both_save_layouts(encoder):
    model_save = load_golden("audio_features", "whisper_weights.safetensors")  # WhisperModel: encoder.* / decoder.*
    generation_save = {f"model.{key}": value for key, value in model_save.items()}  # the real whisper-tiny file
    generation_save["proj_out.weight"] = torch.zeros(64, 8)
    from_model, from_generation = encoder_state_dict(model_save), encoder_state_dict(generation_save)
    assert set(from_model) == set(from_generation) == set(encoder.state_dict())
    assert all(torch.equal(from_model[key], from_generation[key]) for key in from_model)
    assert encoder_state_dict(from_model).keys() == from_model.keys()  # already stripped
    with pytest.raises(WeightsError, match="no Whisper encoder weights"):
        encoder_state_dict({"proj1.weight": torch.zeros(2, 2)})


def test_wrong_whisper_weights_are_a_weights_error():
    weights = load_golden("audio_features", "whisper_weights.safetensors")
    del weights["encoder.layers.3.fc1.weight"]
    with pytest.raises(WeightsError, match="layers.3.fc1.weight"):
        load_whisper_encoder(whisper_config(), weights)
    bigger = dict(whisper_config(), d_model=16)
    with pytest.raises(WeightsError, match="wrong shape"):
        load_whisper_encoder(bigger, load_golden("audio_features", "whisper_weights.safetensors"))


def test_whisper_tiny_builds_on_meta_from_its_config():
    config = dict(whisper_config(), d_model=384, encoder_attention_heads=6, encoder_ffn_dim=1536, vocab_size=51865,
                  decoder_layers=4, decoder_attention_heads=6, decoder_ffn_dim=1536, max_target_positions=448,
                  pad_token_id=50257, bos_token_id=50257, eos_token_id=50257, decoder_start_token_id=50258)
    encoder = build_whisper_encoder(config, device="meta")
    assert sum(p.numel() for p in encoder.parameters()) == 8_208_384  # whisper-tiny's encoder (SPEC: 8.2 M)
    assert encoder.config.d_model == 384 and len(encoder.layers) == 4


# ------------------------------------------------------------------------------- frame windows

def test_frame_windows_from_golden_hidden_states_are_exact():
    """Cutting windows only moves data: bit-exact on any machine."""
    outputs = load_golden("audio_features", "whisper_outputs.safetensors")
    expected = load_golden("audio_features", "frame_windows.safetensors")
    tokens, buckets = frame_windows(outputs["hidden_states_stacked"][:, :164], 41)
    assert tokens.shape == (41, 10, 5, 8) and buckets.shape == (41, 50, 1, 8)
    assert torch.equal(tokens, expected["audio_windows"])
    assert torch.equal(buckets, expected["bucket_windows"])


def test_frame_windows_end_to_end(short_hidden, waveform):
    expected = load_golden("audio_features", "frame_windows.safetensors")
    timeline = Timeline.from_samples(waveform.numel())
    tokens, buckets = frame_windows(short_hidden, timeline.generated_frames)
    assert_close_to_golden(tokens, expected["audio_windows"], "audio_features/token windows")
    assert_close_to_golden(buckets, expected["bucket_windows"], "audio_features/bucket windows")


def test_frame_windows_two_chunks(long_hidden, chunking):
    selected = chunking["selected_frames"]
    tokens, buckets = frame_windows(long_hidden, 382)
    assert tokens.shape[0] == buckets.shape[0] == 382
    assert_close_to_golden(tokens[selected], chunking["audio_windows_sel"], "audio_chunking/token windows")
    assert_close_to_golden(buckets[selected], chunking["bucket_windows_sel"], "audio_chunking/bucket windows")


def test_frame_windows_are_views_of_one_padded_copy():
    """Memory stays O(steps): the 10- and 50-step windows share the padded sequence (no N x 50 copy)."""
    hidden = torch.randn(1, 30_000, 5, 8)  # 10 minutes of Whisper steps
    tokens, buckets = frame_windows(hidden, 7500)
    assert tokens.untyped_storage().nbytes() == (30_000 + 10) * 5 * 8 * 4
    assert buckets.untyped_storage().nbytes() == (30_000 + 50) * 1 * 8 * 4
    i = 1234  # frame i covers steps [4i - 4, 4i + 6) and [4i - 24, 4i + 26)
    assert torch.equal(tokens[i], hidden[0, 4 * i - 4:4 * i + 6])
    assert torch.equal(buckets[i], hidden[0, 4 * i - 24:4 * i + 26, 4:5])


def test_frame_windows_pad_with_zeros_at_both_ends():
    hidden = torch.arange(1, 1 + 12 * 5 * 2, dtype=torch.float32).reshape(1, 12, 5, 2)  # 3 frames
    tokens, buckets = frame_windows(hidden, 3)
    assert torch.equal(tokens[0, :4], torch.zeros(4, 5, 2)) and torch.equal(tokens[0, 4:], hidden[0, :6])
    assert torch.equal(tokens[2, :8], hidden[0, 4:12]) and torch.equal(tokens[2, 8:], torch.zeros(2, 5, 2))
    assert torch.equal(buckets[0, :24], torch.zeros(24, 1, 2)) and torch.equal(buckets[0, 24:36], hidden[0, :, 4:5])
    with pytest.raises(ValueError):
        frame_windows(hidden, 4)  # 4 frames need 16 steps
