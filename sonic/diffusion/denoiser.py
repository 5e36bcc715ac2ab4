"""Sonic's denoiser: the latents of the whole clip at one noise level -> their denoised estimate.

One call = one denoising step of the official sampler (SPEC 6.4-6.6) minus the integrator:
the window plan of the step, the 3-branch guided UNet call of every window, and the per-frame
fusion. A UNet call carries the three guidance branches as a batch of 3:

| branch | concat latent | CLIP context | audio tokens        |
|--------|---------------|--------------|---------------------|
| 0      | zeros         | zeros        | null-audio tokens   |
| 1      | image latent  | e            | null-audio tokens   |
| 2      | image latent  | e            | per-frame tokens    |

and `v = v0 + g1*(v1 - v0) + g2*(v2 - v1)` (guidance on the v-prediction), turned into a
denoised estimate x0 per window. Frames covered by several window slots get the mean of their
x0 (averaging x0 equals the reference's averaging of Euler-stepped windows: the step is affine).

Exactness across devices: the work units (a window, or a window's single branch) only return
their UNet output; the guidance, the x0 and the fusion run afterwards on the main device in
float32, always in canonical (window, then slot) order. Whichever device or rank computed a
unit, the fused result is the same bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from .schedule import Schedule, scale_model_input, v_to_denoised
from .windows import all_step_indices, frame_counts, work_units

NUM_BRANCHES = 3  # [uncond, drop-audio ("appearance"), cond]


@dataclass(frozen=True)
class SamplerProgress:
    """What `callback` receives after every work unit (indices 0-based, `call` counts units done, 1-based).

    A unit is one window's batched 3-branch UNet call, or one branch of a window when branches are split
    (then `window` counts units of the step and `num_windows` is the number of units per step). Under
    torch.distributed a rank reports its own units: `total_calls` counts those."""

    step: int
    num_steps: int
    window: int
    num_windows: int
    call: int
    total_calls: int
    # The clean-latent estimate (1, C, h, w) float32 of the unit's window's first frame, scaled like
    # `ref_latent`, for previews (units holding all three branches only; None otherwise).
    denoised: Optional[torch.Tensor] = None


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
    """The run-constant parts of the batched 3-branch UNet call, built once per device."""

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

    def window_inputs(self, x_in: torch.Tensor, frame_idx: torch.Tensor, branch: int | None = None):
        """UNet arguments of one window: `(sample, clip_context, audio_context, added_time_ids)`.

        x_in: (1, F, C, h, w) the already scaled window latents; frame_idx: int64 (F,) on the device.
        Shapes: sample (3, F, 2C, h, w), clip (3F, 1, Dc), audio (3F, T, Dc), ids (3, 3); rows branch-major.
        With `branch` set, only that branch's rows (batch 1).
        """
        x_in = x_in.to(self.dtype)
        sample = torch.cat([x_in.expand(NUM_BRANCHES, -1, -1, -1, -1), self.concat_latents], dim=2)
        cond = self.audio_tokens.index_select(0, frame_idx)
        audio = torch.cat([self.null_audio_context, cond])
        ids = window_added_time_ids(self.buckets, frame_idx, self.fps).to(self.dtype)
        ids = ids.unsqueeze(0).expand(NUM_BRANCHES, -1)
        if branch is None:
            return sample, self.clip_context, audio, ids
        frames = frame_idx.shape[0]
        rows = slice(branch * frames, (branch + 1) * frames)
        return sample[branch:branch + 1], self.clip_context[rows], audio[rows], ids[branch:branch + 1]


def guide(v: torch.Tensor, appearance_scale: torch.Tensor, audio_scale: torch.Tensor) -> torch.Tensor:
    """(3, F, C, h, w) branch outputs -> (F, C, h, w) float32 `v0 + g1*(v1 - v0) + g2*(v2 - v1)`."""
    v_uncond, v_image, v_cond = v.float().unbind(0)
    return v_uncond + appearance_scale * (v_image - v_uncond) + audio_scale * (v_cond - v_image)


def accumulate(acc: torch.Tensor, x_new: torch.Tensor, frame_idx: torch.Tensor, num_frames: int) -> None:
    """acc[:, frame_idx[k]] += x_new[:, k] in slot order, deterministically on every device.

    A window repeats frames only when N < F; any N consecutive slots are distinct frames, so
    adding in chunks of N slots keeps each index_add_ free of duplicate targets (no atomics race
    on GPUs) and the per-frame summation order equal to the reference's.
    """
    frames = frame_idx.shape[0]
    for start in range(0, frames, num_frames):
        acc.index_add_(1, frame_idx[start:start + num_frames], x_new[:, start:start + num_frames])


@dataclass
class SonicInputs:
    """The conditioning of one clip (see `sample_latents` for shapes)."""

    image_latent: torch.Tensor
    clip_embeds: torch.Tensor
    audio_tokens: torch.Tensor
    null_tokens: torch.Tensor
    buckets: torch.Tensor
    face_mask: Optional[torch.Tensor]


class SonicDenoiser:
    """`denoiser(x, sigma, step=i) -> x0`: float32 (1, N, C, h, w) in and out, on the main device.

    `step` is the index into `schedule` (the window shift and the appearance-guidance ramp depend
    on it). `unets` holds one UNet per local device of `executor`, in its device order.
    """

    def __init__(self, unets: Sequence[Callable[..., torch.Tensor]], inputs: SonicInputs, *, schedule: Schedule,
                 config, executor, dtype: torch.dtype, split_branches: bool | None = None,
                 on_unit: Optional[Callable[[SamplerProgress], None]] = None):
        self.unets = list(unets)
        self.executor = executor
        self.config = config
        self.on_unit = on_unit
        self.main = executor.main_device
        self.num_frames = inputs.audio_tokens.shape[0]
        self.num_steps = schedule.num_steps
        indices = all_step_indices(self.num_frames, self.num_steps, frames_per_window=config.frames_per_window,
                                   overlap=config.window_overlap, shift_offset=config.shift_offset)
        self.num_windows = indices.shape[1]
        self.units = work_units(self.num_windows, executor.num_workers, split_branches)
        counts = torch.stack([frame_counts(step_idx, self.num_frames) for step_idx in indices])
        self.counts = counts.to(device=self.main, dtype=torch.float32).reshape(self.num_steps, 1, -1, 1, 1, 1)
        self.appearance = torch.linspace(config.min_appearance_guidance, config.max_appearance_guidance,
                                         self.num_steps, dtype=torch.float32).to(self.main)
        self.audio_scale = torch.full((self.num_steps,), float(config.audio_guidance), dtype=torch.float32,
                                      device=self.main)
        devices = list(dict.fromkeys([self.main, *executor.local_devices]))
        # Everything a unit reads, once per device (index tables, conditioning, timesteps, mask).
        self.indices = {d: indices.to(d) for d in devices}
        self.timesteps = {d: schedule.timesteps.to(device=d, dtype=torch.float32) for d in devices}
        self.branches = {d: BranchConditioning.build(
            image_latent=inputs.image_latent, clip_embeds=inputs.clip_embeds, audio_tokens=inputs.audio_tokens,
            null_tokens=inputs.null_tokens, buckets=inputs.buckets, fps=config.fps,
            frames_per_window=config.frames_per_window, device=d, dtype=dtype) for d in executor.local_devices}
        self.masks = {d: None if inputs.face_mask is None else inputs.face_mask.to(device=d, dtype=dtype)
                      for d in executor.local_devices}
        self.calls = 0

    @property
    def units_per_step(self) -> int:
        return len(self.units)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, *, step: int) -> torch.Tensor:
        x_in = scale_model_input(x, sigma)  # elementwise, so scaling the whole clip = scaling each window
        x_on = {d: x_in.to(d) for d in self.executor.local_devices}

        def compute(worker: int, unit: tuple[int, int | None]) -> torch.Tensor:
            device = self.executor.local_devices[worker]
            window, branch = unit
            frame_idx = self.indices[device][step, window]
            x_win = x_on[device].index_select(1, frame_idx)
            sample, clip, audio, ids = self.branches[device].window_inputs(x_win, frame_idx, branch)
            v = self.unets[worker](sample, self.timesteps[device][step], clip, audio, ids, self.masks[device],
                                   audio_scale=self.config.ip_audio_scale)
            expected = (sample.shape[0], *x_win.shape[1:])
            if tuple(v.shape) != expected:
                raise RuntimeError(f"the UNet returned shape {tuple(v.shape)}; expected {expected} "
                                   f"(branches x F frames v-prediction)")
            if branch is None and self.on_unit is not None:
                first_frames[window] = v[:, :1].float()  # for the preview of this unit
            return v.float()

        first_frames: dict[int, torch.Tensor] = {}

        def on_result(index: int) -> None:
            window = self.units[index][0]
            preview = None
            if window in first_frames:  # the guided clean estimate of the window's first frame
                frame = self.indices[self.main][step, window][:1]
                guided = guide(first_frames.pop(window).to(self.main), self.appearance[step], self.audio_scale[step])
                preview = v_to_denoised(guided.unsqueeze(0), x.index_select(1, frame), sigma)[:, 0]
            self._progress(step, index, preview)

        outputs = self.executor.map(compute, self.units, on_result=on_result)
        return self.fuse(outputs, x, sigma, step)

    def fuse(self, outputs: list[torch.Tensor], x: torch.Tensor, sigma: torch.Tensor, step: int) -> torch.Tensor:
        """Per-frame mean of the windows' x0, summed in canonical order in float32 on the main device."""
        per_window = len(self.units) // self.num_windows
        acc = torch.zeros_like(x, dtype=torch.float32)
        indices = self.indices[self.main][step]
        for window in range(self.num_windows):
            v = torch.cat(outputs[window * per_window:(window + 1) * per_window])  # (3, F, C, h, w)
            frame_idx = indices[window]
            x_win = x.index_select(1, frame_idx)
            x0 = v_to_denoised(guide(v, self.appearance[step], self.audio_scale[step]).unsqueeze(0), x_win, sigma)
            accumulate(acc, x0, frame_idx, self.num_frames)
        return acc / self.counts[step]

    def _progress(self, step: int, unit: int, denoised: Optional[torch.Tensor] = None) -> None:
        self.calls += 1
        if self.on_unit is not None:
            self.on_unit(SamplerProgress(step=step, num_steps=self.num_steps, window=unit,
                                         num_windows=len(self.units), call=self.calls,
                                         total_calls=self.num_steps * self.executor.local_share(len(self.units)),
                                         denoised=denoised))
