"""Sliding-window layout of the sampler ("time-aware position shift fusion", SPEC 6.5).

At denoising step i the clip of N generated frames is covered by ceil(N / (F - overlap))
windows of F frames. Window j starts at frame `j*(F - overlap) - shift_offset*i` and takes the
next F frames with circular (Python modulo) indexing: the clip is treated as a loop, so after
step 0 one window always joins the last frames to the first ones, and for N < F a single window
holds some frames several times. Every slot counts once in the average of its frame.

Pure functions over integer index tensors; nothing here depends on the latents.
"""

from __future__ import annotations

import torch

from ..errors import ParameterError


def _check_layout(num_frames: int, step_index: int, frames_per_window: int, overlap: int, shift_offset: int) -> None:
    """Raise `ParameterError` for a layout that cannot be built."""
    for name, value in (("num_frames", num_frames), ("step_index", step_index),
                        ("frames_per_window", frames_per_window), ("overlap", overlap),
                        ("shift_offset", shift_offset)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ParameterError(f"{name} must be an integer, got {value!r}")
    if num_frames < 1:
        raise ParameterError(f"there are no frames to generate (num_frames={num_frames}); the audio must give at least one frame")
    if step_index < 0:
        raise ParameterError(f"step_index must be >= 0, got {step_index}")
    if frames_per_window < 1:
        raise ParameterError(f"frames_per_window must be >= 1, got {frames_per_window}")
    if not 0 <= overlap < frames_per_window:
        raise ParameterError(f"overlap must be >= 0 and smaller than frames_per_window ({frames_per_window}), got {overlap}")
    if shift_offset < 0:
        raise ParameterError(f"shift_offset must be >= 0, got {shift_offset}")


def window_starts(num_frames: int, step_index: int, *, frames_per_window: int = 25, overlap: int = 0,
                  shift_offset: int = 7) -> list[int]:
    """Start frame of every window at this step, before the modulo (may be negative)."""
    _check_layout(num_frames, step_index, frames_per_window, overlap, shift_offset)
    shift = shift_offset * step_index  # cumulative per step, not per window
    return [start - shift for start in range(0, num_frames, frames_per_window - overlap)]


def window_indices(num_frames: int, step_index: int, *, frames_per_window: int = 25, overlap: int = 0,
                   shift_offset: int = 7) -> torch.Tensor:
    """Frame index of every slot of every window at step `step_index`.

    Returns a CPU int64 tensor (num_windows, frames_per_window); row j is window j in the order
    the reference runs them, column k is the slot (frame position k fed to the UNet).
    """
    starts = torch.tensor(window_starts(num_frames, step_index, frames_per_window=frames_per_window,
                                        overlap=overlap, shift_offset=shift_offset), dtype=torch.long)
    slots = torch.arange(frames_per_window, dtype=torch.long)
    # torch.remainder has Python-modulo semantics (result in [0, N) for negative starts)
    return torch.remainder(starts[:, None] + slots[None, :], num_frames)


def frame_counts(indices: torch.Tensor, num_frames: int) -> torch.Tensor:
    """How many window slots cover each frame in one step: int64 (num_frames,), the averaging divisor."""
    if indices.dtype != torch.long:
        raise ParameterError(f"indices must be an int64 tensor, got {indices.dtype}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= num_frames):
        raise ParameterError(f"indices must lie in [0, {num_frames}), got values in "
                             f"[{int(indices.min())}, {int(indices.max())}]")
    return torch.bincount(indices.reshape(-1), minlength=num_frames)


def all_step_indices(num_frames: int, num_steps: int, *, frames_per_window: int = 25, overlap: int = 0,
                     shift_offset: int = 7) -> torch.Tensor:
    """`window_indices` of steps 0..num_steps-1 stacked: int64 (num_steps, num_windows, frames_per_window).

    The number of windows does not depend on the step, so the stack is rectangular.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ParameterError(f"num_steps must be a positive integer, got {num_steps!r}")
    return torch.stack([window_indices(num_frames, step, frames_per_window=frames_per_window, overlap=overlap,
                                       shift_offset=shift_offset) for step in range(num_steps)])


def window_plan(num_frames: int, step_index: int, settings) -> torch.Tensor:
    """The window layout of one step from the sampler settings (`frames_per_window`, `window_overlap`,
    `shift_offset` of a `SonicConfig`): the pure function every device, thread and rank evaluates
    alike, so they all agree on which frames each window holds without exchanging anything."""
    return window_indices(num_frames, step_index, frames_per_window=settings.frames_per_window,
                          overlap=settings.window_overlap, shift_offset=settings.shift_offset)


def work_units(num_windows: int, num_devices: int, split_branches: bool | None = None) -> list[tuple[int, int | None]]:
    """The work units of one step in canonical order: `(window, None)` (the 3 guidance branches in one
    batched call), or `(window, branch)` when branches are split. `split_branches=None` splits only when
    there are fewer windows than devices (up to 3 devices then help a short clip)."""
    if split_branches is None:
        split_branches = num_windows < num_devices
    if split_branches:
        return [(window, branch) for window in range(num_windows) for branch in range(3)]
    return [(window, None) for window in range(num_windows)]
