"""Input normalisation shared by the finishing filters: frames, images, audio, boxes."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ParameterError


def as_frames(frames, name: str) -> torch.Tensor:
    """CPU float32 `[T, H, W, 3]` in [0, 1] from a tensor or array (uint8 is scaled)."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise ParameterError(f"{name} must be a tensor [T, H, W, 3], got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ParameterError(f"{name} must be [T, H, W, 3] with T >= 1 (RGB, channels last), got {tuple(frames.shape)}")
    if frames.dtype == torch.uint8:
        return frames.float().div_(255)
    return frames.detach().to("cpu", torch.float32).contiguous()


def as_image(image) -> np.ndarray:
    """float32 `[H, W, 3]` in [0, 1] numpy from a tensor/array `[H, W, 3]` or `[1, H, W, 3]`."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        image = (image.float() if image.dtype != torch.uint8 else image).numpy()
    image = np.asarray(image)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ParameterError(f"image must be [H, W, 3] (RGB), got shape {tuple(image.shape)}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255
    return np.ascontiguousarray(image, dtype=np.float32)


def as_audio(audio) -> np.ndarray:
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().float().numpy()
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2:
        raise ParameterError(f"audio must be [channels, samples], got shape {tuple(audio.shape)}")
    return audio


def box_slices(box, width: int, height: int):
    if box is None:
        return np.s_[:, :]
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
    if x2 - x1 < 2 or y2 - y1 < 2:
        raise ParameterError(f"box {box} is empty inside a {width}x{height} frame")
    return np.s_[y1:y2, x1:x2]
