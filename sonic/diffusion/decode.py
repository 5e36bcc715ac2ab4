"""Latents -> video frames with the SVD temporal VAE, streamed chunk by chunk (SPEC 6.7).

The temporal decoder mixes frames only inside one `vae.decode` call, so the chunk size is part of
the result (seams every `chunk_size` frames): 8 is the official value. Frames come out in
ComfyUI's IMAGE layout, float32 [n, H, W, 3] in [0, 1] on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..config import VAE_SCALING_FACTOR
from ..errors import ParameterError


def _flatten_latents(latents: torch.Tensor) -> torch.Tensor:
    if latents.dim() == 5:
        if latents.shape[0] != 1:
            raise ParameterError(f"latents (B, N, C, h, w) must have B = 1, got {tuple(latents.shape)}")
        latents = latents[0]
    if latents.dim() != 4:
        raise ParameterError(f"latents must be (N, C, h, w) or (1, N, C, h, w), got {tuple(latents.shape)}")
    if latents.shape[0] == 0:
        raise ParameterError("no latent frames to decode")
    return latents


def decode_latents(vae, latents: torch.Tensor, *, chunk_size: int = 8) -> Iterator[torch.Tensor]:
    """Yield decoded frames chunk by chunk; never holds more than one chunk of pixels.

    Args:
        vae: `AutoencoderKLTemporalDecoder` on any device/dtype (latents are cast to it).
        latents: (N, C, h, w) or (1, N, C, h, w) in the sampler's scaled space (x 0.18215).
        chunk_size: frames per decoder call; the last chunk may be shorter.

    Yields:
        float32 CPU tensors [n, 8h, 8w, 3] in [0, 1], n = chunk_size except maybe the last.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ParameterError(f"decode chunk_size must be a positive integer, got {chunk_size!r}")
    latents = _flatten_latents(latents)
    expected_channels = vae.config.latent_channels
    if latents.shape[1] != expected_channels:
        raise ParameterError(f"latents have {latents.shape[1]} channels, the VAE expects {expected_channels}")
    return _decode_chunks(vae, latents, chunk_size)


@torch.no_grad()
def _decode_chunks(vae, latents: torch.Tensor, chunk_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, latents.shape[0], chunk_size):
        yield decode_chunk(vae, latents[start:start + chunk_size]).cpu()


@torch.no_grad()
def decode_chunk(vae, chunk: torch.Tensor) -> torch.Tensor:
    """One decoder call: (n, C, h, w) latents -> float32 [n, 8h, 8w, 3] in [0, 1] on the VAE's device."""
    parameter = next(vae.parameters())
    # Python-float reciprocal times the tensor, as the official pipeline computes it (bit-exact).
    z = (1 / VAE_SCALING_FACTOR) * chunk.to(device=parameter.device, dtype=torch.float32)
    frames = vae.decode(z.to(parameter.dtype), num_frames=chunk.shape[0]).sample
    return frames.float().mul(0.5).add(0.5).clamp(0, 1).permute(0, 2, 3, 1)


def decode_latents_split(executor, vaes: list, latents: torch.Tensor, *, chunk_size: int = 8) -> Iterator[torch.Tensor]:
    """`decode_latents` with the chunks spread over the devices of `executor` (one VAE per local
    device); the chunk boundaries are the serial ones, so the frames are the same. Chunks are
    decoded in rounds of one per device and yielded in order (memory stays bounded)."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ParameterError(f"decode chunk_size must be a positive integer, got {chunk_size!r}")
    latents = _flatten_latents(latents)
    starts = list(range(0, latents.shape[0], chunk_size))
    full = [s for s in starts if s + chunk_size <= latents.shape[0]]
    # Units of one exchange need one shape: the shorter last chunk makes a round of its own.
    rounds = [full[i:i + executor.num_workers] for i in range(0, len(full), executor.num_workers)]
    rounds += [[s] for s in starts if s not in full]

    def compute(worker: int, start: int) -> torch.Tensor:
        return decode_chunk(vaes[worker], latents[start:start + chunk_size])

    for units in rounds:
        yield from executor.map(compute, units, to="cpu", tally=False)  # the tally counts UNet units


def decode_all(vae, latents: torch.Tensor, *, chunk_size: int = 8) -> torch.Tensor:
    """All frames at once: float32 CPU [N, 8h, 8w, 3] in [0, 1] (convenience over `decode_latents`)."""
    return torch.cat(list(decode_latents(vae, latents, chunk_size=chunk_size)))
