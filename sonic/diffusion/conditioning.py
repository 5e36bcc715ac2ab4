"""Per-frame conditioning computed once before sampling (audio part: SPEC 3.3, 4, 6.2).

The official `sonic.py:test` calls audio2token and audio2bucket once per generated frame in a
Python loop and recomputes the null-audio tokens every time; here the frames go through the
adapters in batches of `batch_size` windows and the null tokens are computed once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import BUCKET_SCALE, BUCKET_SHIFT


@dataclass(frozen=True)
class AudioConditioning:
    """Audio conditioning of every generated frame.

    tokens: (N, T, D) audio tokens per frame (T = 32, D = 1024 for the real model).
    null_tokens: (T, D) `audio2token(zeros)`, the "no audio" tokens (not zero).
    buckets: (N, 2) per-frame [motion, expression] buckets = (16 * out + 16) * dynamic_scale,
        with the motion channel also multiplied by motion_scale.
    """

    tokens: torch.Tensor
    null_tokens: torch.Tensor
    buckets: torch.Tensor

    @property
    def num_frames(self) -> int:
        return self.tokens.shape[0]


def _model_place(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


@torch.no_grad()
def audio_conditioning(token_model: torch.nn.Module, bucket_model: torch.nn.Module, token_windows: torch.Tensor,
                       bucket_windows: torch.Tensor, clip_embeds: torch.Tensor, *, dynamic_scale: float = 1.0,
                       motion_scale: float = 1.0, batch_size: int = 256,
                       output_device=None) -> AudioConditioning:
    """Run the adapters on all frame windows, `batch_size` windows per call.

    token_windows (N, 10, 5, d) and bucket_windows (N, 50, 1, d) come from
    `audio.frame_windows` (views are fine: each batch is copied to the models' device on its
    own, so memory stays bounded for long audio). clip_embeds (1, Dc) is the CLIP image
    embedding used for every frame. Results are float32 on `output_device` (default: the
    token model's device).
    """
    if token_windows.shape[0] != bucket_windows.shape[0]:
        raise ValueError(f"{token_windows.shape[0]} token windows but {bucket_windows.shape[0]} bucket windows")
    if token_windows.shape[0] == 0:
        raise ValueError("no frame windows: the audio gives no generated frame")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    token_device, token_dtype = _model_place(token_model)
    bucket_device, bucket_dtype = _model_place(bucket_model)
    output_device = torch.device(output_device) if output_device is not None else token_device
    clip = clip_embeds.reshape(1, -1).to(bucket_device, bucket_dtype)

    count = token_windows.shape[0]
    tokens, raw_buckets = [], []
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        window = token_windows[start:stop].to(token_device, token_dtype)
        tokens.append(token_model(window).float().to(output_device))
        window = bucket_windows[start:stop].to(bucket_device, bucket_dtype)
        raw_buckets.append(bucket_model(window, clip).float().reshape(stop - start, -1).to(output_device))

    null_window = torch.zeros((1, *token_windows.shape[1:]), device=token_device, dtype=token_dtype)
    null_tokens = token_model(null_window)[0].float().to(output_device)

    buckets = torch.cat(raw_buckets) * BUCKET_SCALE + BUCKET_SHIFT
    buckets = buckets * dynamic_scale  # both channels (official motion_bucket_scale)
    buckets[:, 0] = buckets[:, 0] * motion_scale  # head motion only; 1.0 in the official code
    return AudioConditioning(tokens=torch.cat(tokens), null_tokens=null_tokens, buckets=buckets)
