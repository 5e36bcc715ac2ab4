"""The 3-branch guided Euler sampler over sliding windows (SPEC 6.3-6.6).

One UNet call per window per step carries the three guidance branches as a batch of 3:

| branch | concat latent | CLIP context | audio tokens        |
|--------|---------------|--------------|---------------------|
| 0      | zeros         | zeros        | null-audio tokens   |
| 1      | image latent  | e            | null-audio tokens   |
| 2      | image latent  | e            | per-frame tokens    |

and `v = v0 + g1*(v1 - v0) + g2*(v2 - v1)` (guidance on the v-prediction). Every window of a step
reads the latents of the start of the step; the Euler-stepped windows are summed per frame in
window order then slot order (exactly the reference's order) and divided by the slot counts.

The latent state is kept in float32 whatever the UNet dtype (the reference keeps it in fp16);
UNet inputs are cast to the UNet dtype, its output is guided and stepped in float32. All window
indices and counts are computed once on the CPU up front, so the loop issues no host syncs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..config import SonicConfig
from ..errors import ParameterError
from .schedule import Schedule, add_noise, euler_step, scale_model_input
from .windows import all_step_indices, frame_counts

NUM_BRANCHES = 3  # [uncond, drop-audio ("appearance"), cond]


@dataclass(frozen=True)
class SamplerProgress:
    """What `callback` receives after every UNet call (indices 0-based, `call` counts calls done, 1-based)."""

    step: int
    num_steps: int
    window: int
    num_windows: int
    call: int
    total_calls: int


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


def window_added_time_ids(buckets: torch.Tensor, frame_idx: torch.Tensor, fps: float) -> torch.Tensor:
    """`[fps, mean motion bucket, mean expression bucket]` over the window slots (duplicates counted).

    buckets: (N, 2) already scaled; frame_idx: int64 (..., F) on the buckets' device.
    Returns float32 (..., 3), computed on the device (no host sync).
    """
    gathered = buckets.float().index_select(0, frame_idx.reshape(-1)).reshape(*frame_idx.shape, 2)
    means = gathered.mean(dim=-2)  # (..., 2)
    return torch.cat([torch.full_like(means[..., :1], float(fps)), means], dim=-1)


@dataclass
class BranchConditioning:
    """The run-constant parts of the batched 3-branch UNet call, built once (all on the device)."""

    concat_latents: torch.Tensor  # (3, F, C, h, w): [zeros, img, img] repeated over the F slots
    clip_context: torch.Tensor  # (3*F, 1, Dc): rows [0]*F + [e]*F + [e]*F
    null_audio_context: torch.Tensor  # (2*F, T, Dc): null tokens for branches 0 and 1
    audio_tokens: torch.Tensor  # (N, T, Dc) per-frame tokens, model dtype
    buckets: torch.Tensor  # (N, 2) float32, already scaled
    fps: float
    dtype: torch.dtype

    @classmethod
    def build(cls, *, image_latent: torch.Tensor, clip_embeds: torch.Tensor, audio_tokens: torch.Tensor,
              null_tokens: torch.Tensor, buckets: torch.Tensor, fps: float, frames_per_window: int,
              device: torch.device, dtype: torch.dtype) -> "BranchConditioning":
        frames = frames_per_window
        img = image_latent.to(device=device, dtype=dtype)  # (1, C, h, w), unscaled VAE mode
        concat = torch.cat([torch.zeros_like(img), img, img]).unsqueeze(1).expand(-1, frames, -1, -1, -1)
        embed = clip_embeds.to(device=device, dtype=dtype).reshape(1, 1, -1)  # (1, 1, Dc)
        clip = torch.cat([torch.zeros_like(embed).expand(frames, -1, -1), embed.expand(2 * frames, -1, -1)])
        null = null_tokens.to(device=device, dtype=dtype).unsqueeze(0).expand(2 * frames, -1, -1)
        return cls(concat_latents=concat.contiguous(), clip_context=clip.contiguous(),
                   null_audio_context=null.contiguous(), audio_tokens=audio_tokens.to(device=device, dtype=dtype),
                   buckets=buckets.to(device=device, dtype=torch.float32), fps=float(fps), dtype=dtype)

    def window_inputs(self, x_in: torch.Tensor, frame_idx: torch.Tensor):
        """UNet arguments of one window: `(sample, clip_context, audio_context, added_time_ids)`.

        x_in: (1, F, C, h, w) the already scaled window latents; frame_idx: int64 (F,) on the device.
        Shapes: sample (3, F, 2C, h, w), clip (3F, 1, Dc), audio (3F, T, Dc), ids (3, 3); rows branch-major.
        """
        x_in = x_in.to(self.dtype)
        sample = torch.cat([x_in.expand(NUM_BRANCHES, -1, -1, -1, -1), self.concat_latents], dim=2)
        cond = self.audio_tokens.index_select(0, frame_idx)
        audio = torch.cat([self.null_audio_context, cond])
        ids = window_added_time_ids(self.buckets, frame_idx, self.fps).to(self.dtype)
        return sample, self.clip_context, audio, ids.unsqueeze(0).expand(NUM_BRANCHES, -1)


def guide(v: torch.Tensor, appearance_scale: torch.Tensor, audio_scale: torch.Tensor) -> torch.Tensor:
    """(3, F, C, h, w) branch outputs -> (F, C, h, w) float32 `v0 + g1*(v1 - v0) + g2*(v2 - v1)`."""
    v_uncond, v_image, v_cond = v.float().unbind(0)
    return v_uncond + appearance_scale * (v_image - v_uncond) + audio_scale * (v_cond - v_image)


def _accumulate(acc: torch.Tensor, x_new: torch.Tensor, frame_idx: torch.Tensor, num_frames: int) -> None:
    """acc[:, frame_idx[k]] += x_new[:, k] in slot order, deterministically on every device.

    A window repeats frames only when N < F; any N consecutive slots are distinct frames, so
    adding in chunks of N slots keeps each index_add_ free of duplicate targets (no atomics race
    on GPUs) and the per-frame summation order equal to the reference's.
    """
    frames = frame_idx.shape[0]
    for start in range(0, frames, num_frames):
        acc.index_add_(1, frame_idx[start:start + num_frames], x_new[:, start:start + num_frames])


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


def sample_latents(unet: Callable[..., torch.Tensor], *, ref_latent: torch.Tensor, image_latent: torch.Tensor,
                   clip_embeds: torch.Tensor, audio_tokens: torch.Tensor, null_tokens: torch.Tensor,
                   buckets: torch.Tensor, face_mask: Optional[torch.Tensor], schedule: Schedule,
                   noise: torch.Tensor, config: SonicConfig,
                   callback: Optional[Callable[[SamplerProgress], None]] = None,
                   dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Denoise the whole clip; returns float32 latents (1, N, C, h, w) (scaled by 0.18215, as ref_latent).

    unet: `unet(sample (B,F,2C,h,w), timestep (0-d), clip_context (B*F,1,Dc), audio_context (B*F,T,Dc),
    added_time_ids (B,3), face_mask, audio_scale=...) -> (B,F,C,h,w)` v-prediction.
    ref_latent: (1,C,h,w) scaled VAE mean (initial latents = ref + sigma_start*noise).
    image_latent: (1,C,h,w) unscaled concat latent. clip_embeds (1,Dc); audio_tokens (N,T,Dc);
    null_tokens (T,Dc); buckets (N,2) [motion, expression], already scaled; face_mask (1,1,H,W)
    pixel space. noise: (1,N,C,h,w), e.g. `initial_noise(seed, shape)`; moved to the device.
    schedule: `make_schedule(...)` (steps already cut by i2i strength). Runs on ref_latent's device;
    UNet inputs use `dtype` (default: image_latent's dtype). `callback(SamplerProgress)` runs after
    every UNet call; an exception it raises propagates (cancellation).
    """
    _check_inputs(ref_latent=ref_latent, image_latent=image_latent, clip_embeds=clip_embeds,
                  audio_tokens=audio_tokens, null_tokens=null_tokens, buckets=buckets, face_mask=face_mask,
                  schedule=schedule, noise=noise)
    with torch.no_grad():
        return _sample(unet, ref_latent=ref_latent, image_latent=image_latent, clip_embeds=clip_embeds,
                       audio_tokens=audio_tokens, null_tokens=null_tokens, buckets=buckets, face_mask=face_mask,
                       schedule=schedule, noise=noise, config=config, callback=callback, dtype=dtype)


def _sample(unet, *, ref_latent, image_latent, clip_embeds, audio_tokens, null_tokens, buckets, face_mask,
            schedule, noise, config, callback, dtype) -> torch.Tensor:
    """The sampling loop of `sample_latents` (inputs already checked, autograd off)."""
    device = ref_latent.device
    dtype = dtype or image_latent.dtype
    num_frames = audio_tokens.shape[0]
    frames = config.frames_per_window
    sigmas = schedule[0].to(device=device, dtype=torch.float32)
    timesteps = schedule[1].to(device=device, dtype=torch.float32)
    num_steps = timesteps.shape[0]

    # Layout of every step, fixed by N and the config: computed once on the CPU, then one copy.
    indices_cpu = all_step_indices(num_frames, num_steps, frames_per_window=frames,
                                   overlap=config.window_overlap, shift_offset=config.shift_offset)
    counts = torch.stack([frame_counts(step_idx, num_frames) for step_idx in indices_cpu])
    indices = indices_cpu.to(device)
    counts = counts.to(device=device, dtype=torch.float32).reshape(num_steps, 1, num_frames, 1, 1, 1)
    num_windows = indices_cpu.shape[1]
    total_calls = num_steps * num_windows

    appearance = torch.linspace(config.min_appearance_guidance, config.max_appearance_guidance, num_steps,
                                dtype=torch.float32).to(device)
    audio_scale = torch.full((num_steps,), float(config.audio_guidance), dtype=torch.float32, device=device)
    branches = BranchConditioning.build(image_latent=image_latent, clip_embeds=clip_embeds, audio_tokens=audio_tokens,
                                        null_tokens=null_tokens, buckets=buckets, fps=config.fps,
                                        frames_per_window=frames, device=device, dtype=dtype)
    mask = None if face_mask is None else face_mask.to(device=device, dtype=dtype)

    latents = add_noise(ref_latent.to(device), noise.to(device=device, dtype=torch.float32), sigmas[0])
    call = 0
    for step in range(num_steps):
        sigma, sigma_next = sigmas[step], sigmas[step + 1]
        acc = torch.zeros_like(latents)
        for window in range(num_windows):
            frame_idx = indices[step, window]
            x_win = latents.index_select(1, frame_idx)  # from the start-of-step latents
            sample, clip_ctx, audio_ctx, time_ids = branches.window_inputs(scale_model_input(x_win, sigma), frame_idx)
            v = unet(sample, timesteps[step], clip_ctx, audio_ctx, time_ids, mask, audio_scale=config.ip_audio_scale)
            if tuple(v.shape) != (NUM_BRANCHES, *x_win.shape[1:]):
                raise RuntimeError(f"the UNet returned shape {tuple(v.shape)}; expected "
                                   f"{(NUM_BRANCHES, *x_win.shape[1:])} (3 branches x F frames v-prediction)")
            guided = guide(v, appearance[step], audio_scale[step]).unsqueeze(0)
            _accumulate(acc, euler_step(x_win, guided, sigma, sigma_next), frame_idx, num_frames)
            call += 1
            if callback is not None:
                callback(SamplerProgress(step=step, num_steps=num_steps, window=window, num_windows=num_windows,
                                         call=call, total_calls=total_calls))
        latents = acc / counts[step]
    return latents
