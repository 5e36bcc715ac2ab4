"""Sampling of the whole clip: the Sonic denoiser driven by an integrator (SPEC 6.3-6.6).

`sample_latents` builds the initial latents `ref + sigma_start * noise`, a `SonicDenoiser`
(window plan -> 3-branch guided UNet calls -> per-frame fusion, `denoiser.py`) over an executor
(serial, threads over devices, or torch.distributed ranks, `executors.py`), and runs an
integrator over the schedule (`integrators.py`: Euler, the official one, or DPM-Solver++(2M)).

The latent state is kept in float32 whatever the UNet dtype (the reference keeps it in fp16);
UNet inputs are cast to the UNet dtype, its output is guided and fused in float32. All window
indices and counts are computed once on the CPU up front, so the loop issues no host syncs.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from ..config import SonicConfig
from ..errors import ParameterError
from .denoiser import (NUM_BRANCHES, BranchConditioning, SamplerProgress, SonicDenoiser, SonicInputs, guide,
                       window_added_time_ids)
from .executors import SerialExecutor
from .integrators import integrator
from .schedule import Schedule, add_noise

__all__ = ["NUM_BRANCHES", "BranchConditioning", "SamplerProgress", "guide", "initial_noise", "sample_latents",
           "window_added_time_ids"]


def initial_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal float32 CPU noise from `torch.Generator("cpu").manual_seed(seed)`; seed 0 is valid.

    The official pipeline draws fp16 noise on the CUDA device after a noise-augmentation draw;
    that stream cannot be reproduced on other devices. Drawing on the CPU makes a seed give the
    same noise on every machine; for bit-reproducibility pass the noise tensor itself.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise ParameterError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)


def _check_inputs(*, ref_latent, image_latent, clip_embeds, audio_tokens, null_tokens, buckets, face_mask,
                  schedule, noise) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ParameterError(message)

    tensors = dict(ref_latent=ref_latent, image_latent=image_latent, clip_embeds=clip_embeds,
                   audio_tokens=audio_tokens, null_tokens=null_tokens, buckets=buckets, noise=noise)
    for name, value in tensors.items():
        need(isinstance(value, torch.Tensor), f"{name} must be a torch.Tensor, got {type(value).__name__}")
    need(ref_latent.dim() == 4 and ref_latent.shape[0] == 1, f"ref_latent must be (1, C, h, w), got {tuple(ref_latent.shape)}")
    need(image_latent.shape == ref_latent.shape,
         f"image_latent {tuple(image_latent.shape)} must have the shape of ref_latent {tuple(ref_latent.shape)}")
    need(audio_tokens.dim() == 3, f"audio_tokens must be (N, T, Dc), got {tuple(audio_tokens.shape)}")
    num_frames = audio_tokens.shape[0]
    need(num_frames >= 1, "there are no frames to generate: the audio is shorter than one video frame (80 ms)")
    need(tuple(null_tokens.shape) == tuple(audio_tokens.shape[1:]),
         f"null_tokens must be (T, Dc) = {tuple(audio_tokens.shape[1:])}, got {tuple(null_tokens.shape)}")
    need(tuple(clip_embeds.shape) == (1, audio_tokens.shape[2]),
         f"clip_embeds must be (1, {audio_tokens.shape[2]}), got {tuple(clip_embeds.shape)}")
    need(tuple(buckets.shape) == (num_frames, 2), f"buckets must be ({num_frames}, 2), got {tuple(buckets.shape)}")
    expected_noise = (1, num_frames, *ref_latent.shape[1:])
    need(tuple(noise.shape) == expected_noise, f"noise must be {expected_noise}, got {tuple(noise.shape)}")
    need(face_mask is None or (isinstance(face_mask, torch.Tensor) and face_mask.dim() == 4),
         "face_mask must be None or a (1, 1, H, W) tensor")
    need(isinstance(schedule, tuple) and len(schedule) == 2, "schedule must be a Schedule (sigmas, timesteps) from make_schedule")
    sigmas, timesteps = schedule
    need(timesteps.dim() == 1 and timesteps.shape[0] >= 1 and tuple(sigmas.shape) == (timesteps.shape[0] + 1,),
         f"schedule needs >= 1 timestep and one more sigma, got sigmas {tuple(sigmas.shape)}, timesteps {tuple(timesteps.shape)}")


def sample_latents(unet: Callable[..., torch.Tensor] | Sequence[Callable[..., torch.Tensor]], *,
                   ref_latent: torch.Tensor, image_latent: torch.Tensor,
                   clip_embeds: torch.Tensor, audio_tokens: torch.Tensor, null_tokens: torch.Tensor,
                   buckets: torch.Tensor, face_mask: Optional[torch.Tensor], schedule: Schedule,
                   noise: torch.Tensor, config: SonicConfig,
                   callback: Optional[Callable[[SamplerProgress], None]] = None,
                   dtype: Optional[torch.dtype] = None, executor=None, sampler: str = "euler",
                   split_branches: bool | None = None) -> torch.Tensor:
    """Denoise the whole clip; returns float32 latents (1, N, C, h, w) (scaled by 0.18215, as ref_latent).

    unet: `unet(sample (B,F,2C,h,w), timestep (0-d), clip_context (B*F,1,Dc), audio_context (B*F,T,Dc),
    added_time_ids (B,3), face_mask) -> (B,F,C,h,w)` v-prediction; or one such UNet per local device
    of `executor` (`executor.replicate(unet)`).
    ref_latent: (1,C,h,w) scaled VAE mean (initial latents = ref + sigma_start*noise).
    image_latent: (1,C,h,w) unscaled concat latent. clip_embeds (1,Dc); audio_tokens (N,T,Dc);
    null_tokens (T,Dc); buckets (N,2) [motion, expression], already scaled; face_mask (1,1,H,W)
    pixel space. noise: (1,N,C,h,w), e.g. `initial_noise(seed, shape)`; moved to the device.
    schedule: `make_schedule(...)` (steps already cut by i2i strength). Runs on ref_latent's device
    (or the executor's main device); UNet inputs use `dtype` (default: image_latent's dtype).
    `callback(SamplerProgress)` runs after every work unit; an exception it raises propagates
    (cancellation). executor: `SerialExecutor` (default), `ThreadExecutor` or `DistributedExecutor`;
    the result does not depend on it. sampler: "euler" (official) or "dpmpp_2m". split_branches:
    units of one guidance branch instead of one window (None: only when windows < devices); the
    result then equals a serial run with the same setting, not the batched one bit for bit.
    """
    _check_inputs(ref_latent=ref_latent, image_latent=image_latent, clip_embeds=clip_embeds,
                  audio_tokens=audio_tokens, null_tokens=null_tokens, buckets=buckets, face_mask=face_mask,
                  schedule=schedule, noise=noise)
    run = integrator(sampler)
    schedule = Schedule(*schedule)
    executor = executor or SerialExecutor(ref_latent.device)
    unets = list(unet) if isinstance(unet, (list, tuple)) else executor.replicate(unet)
    if len(unets) != len(executor.local_devices):
        raise ParameterError(f"{len(unets)} UNet(s) given for {len(executor.local_devices)} device(s)")
    main = executor.main_device
    # Every rank samples from rank 0's conditioning and noise (a no-op in one process).
    share = executor.broadcast
    ref_latent, image_latent, clip_embeds, noise = map(share, (ref_latent, image_latent, clip_embeds, noise))
    audio_tokens, null_tokens, buckets = map(share, (audio_tokens, null_tokens, buckets))
    face_mask = None if face_mask is None else share(face_mask)
    inputs = SonicInputs(image_latent=image_latent, clip_embeds=clip_embeds, audio_tokens=audio_tokens,
                         null_tokens=null_tokens, buckets=buckets, face_mask=face_mask)
    with torch.no_grad():
        denoiser = SonicDenoiser(unets, inputs, schedule=schedule, config=config, executor=executor,
                                 dtype=dtype or image_latent.dtype, split_branches=split_branches, on_unit=callback)
        sigmas = schedule.sigmas.to(device=main, dtype=torch.float32)
        latents = add_noise(ref_latent.to(main), noise.to(device=main, dtype=torch.float32), sigmas[0])
        return run(denoiser, latents, sigmas)
