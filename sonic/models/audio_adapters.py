"""Sonic's two audio adapters (SPEC 4): Whisper windows -> audio tokens, and -> motion buckets.

Both are plain MLPs whose state-dict keys equal the official `audio2token.pth` /
`audio2bucket.pth` (`proj1`, `proj2`, `proj3`, and `norm` for audio2token). Widths are read
from the checkpoint's tensor shapes, so the tiny golden models run the same code.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..config import BUCKET_WINDOW, TOKEN_WINDOW, TOKEN_WINDOW_LAYERS
from ..errors import WeightsError

BUCKET_LAYERS = 1  # audio2bucket sees the last Whisper layer only
BUCKET_CHANNELS = 2  # audio2bucket outputs: 0 = motion (head) bucket, 1 = expression bucket
BUCKET_OUTPUT_DIM = 1  # values per bucket


def _shape(state_dict: Mapping[str, torch.Tensor], key: str, model: str, ndim: int) -> tuple[int, ...]:
    """Shape of `state_dict[key]`, which must exist and have `ndim` dimensions."""
    if key not in state_dict:
        raise WeightsError(f"{model}: the weights have no '{key}' (keys: {sorted(state_dict)[:8]}); "
                           f"is this the right file ({model}.pth)?")
    shape = tuple(state_dict[key].shape)
    if len(shape) != ndim or 0 in shape:
        raise WeightsError(f"{model}: '{key}' has shape {shape}, expected {ndim} non-empty dimensions; "
                           f"is this the right file ({model}.pth)?")
    return shape


def _divide(total: int, part: int, what: str, model: str) -> int:
    if part <= 0 or total % part:
        raise WeightsError(f"{model}: {what} ({total}) is not a multiple of {part}; is this the right file ({model}.pth)?")
    return total // part


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], model: str) -> nn.Module:
    """Load `state_dict` with exact key names and shapes (`WeightsError` listing the differences)."""
    from ..weights import HINTS, load_strict as load_checked

    return load_checked(module, state_dict, path=f"the given {model} weights", what=model, hints=HINTS[model])


class AudioToTokens(nn.Module):
    """`audio2token` (official AudioProjModel): a 10-step window of 5 Whisper layers -> audio tokens.

    Input (..., 10, 5, d) -> output (..., context_tokens, output_dim); real sizes d = 384,
    32 tokens of width 1024. The window is flattened step-major, then layer, then channel.
    """

    def __init__(self, *, channels: int, intermediate_dim: int, output_dim: int, context_tokens: int,
                 seq_len: int = TOKEN_WINDOW, blocks: int = TOKEN_WINDOW_LAYERS) -> None:
        super().__init__()
        self.seq_len, self.blocks, self.channels = seq_len, blocks, channels
        self.context_tokens, self.output_dim = context_tokens, output_dim
        self.proj1 = nn.Linear(seq_len * blocks * channels, intermediate_dim)
        self.proj2 = nn.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = nn.Linear(intermediate_dim, context_tokens * output_dim)
        self.norm = nn.LayerNorm(output_dim)  # per token, eps 1e-5, affine

    @classmethod
    def from_state_dict_shapes(cls, state_dict: Mapping[str, torch.Tensor], *, seq_len: int = TOKEN_WINDOW,
                               blocks: int = TOKEN_WINDOW_LAYERS, device=None,
                               dtype: torch.dtype | None = None) -> "AudioToTokens":
        """An unloaded module whose widths are inferred from `state_dict`'s tensor shapes."""
        model = "audio2token"
        intermediate_dim, flat_in = _shape(state_dict, "proj1.weight", model, 2)
        token_values = _shape(state_dict, "proj3.weight", model, 2)[0]
        output_dim = _shape(state_dict, "norm.weight", model, 1)[0]
        channels = _divide(flat_in, seq_len * blocks, "proj1's input width", model)
        context_tokens = _divide(token_values, output_dim, "proj3's output width", model)
        with torch.device(device if device is not None else "cpu"):
            module = cls(channels=channels, intermediate_dim=intermediate_dim, output_dim=output_dim,
                         context_tokens=context_tokens, seq_len=seq_len, blocks=blocks)
        return module.to(dtype) if dtype is not None else module

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], **kwargs) -> "AudioToTokens":
        """Build from the shapes and load the weights strictly (eval mode)."""
        return load_strict(cls.from_state_dict_shapes(state_dict, **kwargs), state_dict, "audio2token").eval()

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        leading = windows.shape[:-3]
        flat = windows.reshape(-1, self.seq_len * self.blocks * self.channels)
        hidden = torch.relu(self.proj1(flat))
        hidden = torch.relu(self.proj2(hidden))
        tokens = self.proj3(hidden).reshape(-1, self.context_tokens, self.output_dim)
        return self.norm(tokens).reshape(*leading, self.context_tokens, self.output_dim)


class AudioToBucket(nn.Module):
    """`audio2bucket` (official Audio2bucketModel): 50 steps of the last Whisper layer + CLIP -> 2 buckets.

    Inputs (..., 50, 1, d) and a CLIP image embedding (rows, clip_channels) with one row per
    window or a single row for all; output (..., 2, 1): raw values, before `16 * out + 16`.
    """

    def __init__(self, *, channels: int, clip_channels: int, intermediate_dim: int,
                 context_tokens: int = BUCKET_CHANNELS, output_dim: int = BUCKET_OUTPUT_DIM,
                 seq_len: int = BUCKET_WINDOW, blocks: int = BUCKET_LAYERS) -> None:
        super().__init__()
        self.seq_len, self.blocks, self.channels, self.clip_channels = seq_len, blocks, channels, clip_channels
        self.context_tokens, self.output_dim = context_tokens, output_dim
        self.proj1 = nn.Linear(seq_len * blocks * channels + clip_channels, intermediate_dim)
        self.proj2 = nn.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = nn.Linear(intermediate_dim, context_tokens * output_dim)
        self.act = nn.SiLU()

    @classmethod
    def from_state_dict_shapes(cls, state_dict: Mapping[str, torch.Tensor], *, whisper_width: int,
                               seq_len: int = BUCKET_WINDOW, blocks: int = BUCKET_LAYERS,
                               output_dim: int = BUCKET_OUTPUT_DIM, device=None,
                               dtype: torch.dtype | None = None) -> "AudioToBucket":
        """An unloaded module whose widths are inferred from `state_dict`'s shapes.

        proj1's input is [audio (seq_len * blocks * whisper_width) | CLIP]; the Whisper width
        (d_model, 384 for whisper-tiny) tells where the split is.
        """
        model = "audio2bucket"
        intermediate_dim, flat_in = _shape(state_dict, "proj1.weight", model, 2)
        outputs = _shape(state_dict, "proj3.weight", model, 2)[0]
        clip_channels = flat_in - seq_len * blocks * whisper_width
        if clip_channels <= 0:
            raise WeightsError(f"{model}: proj1 takes {flat_in} inputs, fewer than the {seq_len * blocks * whisper_width} "
                               f"audio values of a Whisper of width {whisper_width}; the Whisper model and the Sonic "
                               f"weights do not belong together")
        context_tokens = _divide(outputs, output_dim, "proj3's output width", model)
        with torch.device(device if device is not None else "cpu"):
            module = cls(channels=whisper_width, clip_channels=clip_channels, intermediate_dim=intermediate_dim,
                         context_tokens=context_tokens, output_dim=output_dim, seq_len=seq_len, blocks=blocks)
        return module.to(dtype) if dtype is not None else module

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], *, whisper_width: int, **kwargs) -> "AudioToBucket":
        """Build from the shapes and load the weights strictly (eval mode)."""
        module = cls.from_state_dict_shapes(state_dict, whisper_width=whisper_width, **kwargs)
        return load_strict(module, state_dict, "audio2bucket").eval()

    def forward(self, windows: torch.Tensor, clip_embeds: torch.Tensor) -> torch.Tensor:
        leading = windows.shape[:-3]
        audio = windows.reshape(-1, self.seq_len * self.blocks * self.channels)
        clip = clip_embeds.reshape(-1, self.clip_channels).to(audio.dtype)
        if clip.shape[0] == 1 and audio.shape[0] != 1:
            clip = clip.expand(audio.shape[0], -1)  # one image for every window
        hidden = self.act(self.proj1(torch.cat([audio, clip], dim=-1)))  # audio first, then CLIP
        hidden = self.act(self.proj2(hidden))
        return self.proj3(hidden).reshape(*leading, self.context_tokens, self.output_dim)
