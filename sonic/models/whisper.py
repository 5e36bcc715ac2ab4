"""The Whisper encoder Sonic uses for audio features (SPEC 3.2).

The official code loads the whole `WhisperModel` (encoder + decoder, 37.8 M parameters) and uses
only the encoder (8.2 M); we build and load the encoder alone. transformers is imported inside
the functions so that importing this module stays cheap.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..errors import WeightsError

# Prefixes under which checkpoints store the encoder: a `WhisperForConditionalGeneration` save
# (the released whisper-tiny) and a `WhisperModel` save (the golden fixture, the official loader).
_ENCODER_PREFIXES = ("model.encoder.", "encoder.")
_ENCODER_ONLY_KEY = "conv1.weight"  # present in an encoder-only state dict


def whisper_config(config):
    """A transformers `WhisperConfig` from a config dict (e.g. whisper-tiny's config.json) or a config."""
    from transformers import WhisperConfig

    if isinstance(config, WhisperConfig):
        return config
    if not isinstance(config, Mapping):
        raise WeightsError(f"the Whisper config must be a dict (config.json) or a WhisperConfig, got {type(config).__name__}")
    return WhisperConfig(**dict(config))


def build_whisper_encoder(config, *, attn_implementation: str = "sdpa", device=None,
                          dtype: torch.dtype | None = None) -> torch.nn.Module:
    """An untrained transformers `WhisperEncoder` in eval mode, built from `config`.

    `attn_implementation` is "sdpa" (default: equal to the eager maths within float rounding,
    about 5e-7 of the peak on the golden fixture, and faster) or "eager". `device="meta"` builds
    it without memory, for `load_state_dict(..., assign=True)`.
    """
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = whisper_config(config)
    config._attn_implementation = attn_implementation
    with torch.device(device if device is not None else "cpu"):
        encoder = WhisperEncoder(config)
    if dtype is not None:
        encoder = encoder.to(dtype)
    return encoder.eval().requires_grad_(False)


def encoder_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's weights with the prefix stripped; decoder and `proj_out` weights are dropped.

    Accepts a `WhisperModel` save (`encoder.*`, `decoder.*`), a `WhisperForConditionalGeneration`
    save (`model.encoder.*`, `model.decoder.*`, `proj_out.weight`) or an encoder-only state dict.
    """
    for prefix in _ENCODER_PREFIXES:
        encoder = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
        if encoder:
            return encoder
    if _ENCODER_ONLY_KEY in state_dict:
        return dict(state_dict)
    sample = sorted(state_dict)[:5]
    raise WeightsError(
        f"this file holds no Whisper encoder weights (no 'encoder.*' or 'model.encoder.*' keys; first keys: {sample}); "
        f"use the whisper-tiny model.safetensors / pytorch_model.bin")


def load_whisper_encoder(config, state_dict: Mapping[str, torch.Tensor], *, device=None,
                         dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa") -> torch.nn.Module:
    """Build the encoder on the meta device and load `state_dict` (any save `encoder_state_dict` accepts) strictly."""
    weights = encoder_state_dict(state_dict)
    encoder = build_whisper_encoder(config, attn_implementation=attn_implementation, device="meta")
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong_shape = sorted(key for key in set(expected) & set(weights) if tuple(expected[key].shape) != tuple(weights[key].shape))
    if missing or unexpected or wrong_shape:
        raise WeightsError(
            f"the Whisper weights do not fit the Whisper config: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shape {wrong_shape[:5]}; use the config.json that belongs to these weights (whisper-tiny)")
    target = torch.device(device) if device is not None else torch.device("cpu")
    encoder.load_state_dict({key: value.to(target, dtype) for key, value in weights.items()}, strict=True, assign=True)
    return encoder.eval().requires_grad_(False)


@torch.no_grad()
def encoder_hidden_states(encoder: torch.nn.Module, mel_chunk: torch.Tensor) -> torch.Tensor:
    """All hidden states of one 30 s chunk, stacked: (1, 1500, layers + 1, d).

    Index 0 is the embedding output (+ positions), 1..layers-1 the outputs of the first layers,
    and the last one the final LayerNorm of the last layer's output (= `last_hidden_state`),
    as `output_hidden_states=True` gave in the official transformers 4.43. For whisper-tiny
    that is 5 states. `mel_chunk` is (1, 80, 3000) in the encoder's device and dtype.
    """
    output = encoder(mel_chunk, output_hidden_states=True)
    layers = len(encoder.layers)
    states = output.hidden_states
    if len(states) != layers + 1:
        raise RuntimeError(f"expected {layers + 1} Whisper hidden states, transformers returned {len(states)}")
    # The last layer's entry is taken from last_hidden_state so that it is the LayerNorm output
    # whatever the transformers version puts in the tuple.
    return torch.stack([*states[:layers], output.last_hidden_state], dim=2)
