"""The values that pass between the pipeline's stages and what a run returns.

prepare -> `PreparedJob` (CPU, cheap) -> encode -> `Conditioning` -> sample -> latents -> decode
-> frames -> `sonic.finishing.tail.finish` -> `SonicOutput` (every frame) or `SonicStream`
(frames produced while they are consumed).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .config import SonicConfig
from .diffusion.conditioning import AudioConditioning
from .diffusion.timeline import Timeline
from .inputs.audio import AudioClip
from .inputs.portrait import PreparedPortrait


@dataclass(frozen=True)
class ProgressInfo:
    """What a progress callback receives: `done` of `total` units of `stage` are finished."""

    stage: str  # "audio", "conditioning", "sampling", "decode", "interpolate"
    done: int
    total: int


ProgressCallback = Callable[[ProgressInfo], None]


@dataclass(frozen=True)
class PreparedJob:
    """Inputs checked and prepared on the CPU: nothing heavy has run yet."""

    portrait: PreparedPortrait
    audio: AudioClip
    timeline: Timeline
    config: SonicConfig


@dataclass
class Conditioning:
    """Everything the sampler needs, on the pipeline's device."""

    job: PreparedJob
    ref_latent: torch.Tensor  # (1, 4, h, w) VAE mean x 0.18215: the initial-latent anchor
    image_latent: torch.Tensor  # (1, 4, h, w) VAE mode, unscaled: concat conditioning
    clip_embeds: torch.Tensor  # (1, Dc)
    audio: AudioConditioning  # tokens (N, T, Dc), null_tokens (T, Dc), buckets (N, 2)
    face_mask: torch.Tensor  # (1, 1, H, W) in [0, 1]

    @property
    def num_frames(self) -> int:
        return self.job.timeline.generated_frames


@dataclass(frozen=True)
class SonicOutput:
    """A finished generation. `frames` are unquantised float32 [T, H, W, 3] in [0, 1] on the CPU."""

    frames: torch.Tensor
    fps: float
    audio: np.ndarray  # float32 [C, S]: the soundtrack that matches the frames
    sample_rate: int
    crop_box: tuple[int, int, int, int]  # region of the input image the video shows (input pixels)
    timeline: Timeline
    config: SonicConfig
    report: dict[str, Any] = field(default_factory=dict)
    job: PreparedJob | None = None  # the prepared inputs (portrait crop, face box, audio clip)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def seconds(self) -> float:
        return self.num_frames / self.fps


@dataclass(frozen=True)
class SonicStream:
    """A generation whose frames are produced while they are consumed (`SonicPipeline.stream`):
    `frames` yields float32 [n, H, W, 3] chunks, `num_frames` of them in all, known up front.
    Iterate it once (e.g. into `sonic.media.video.write_mp4`); the rest is as in `SonicOutput`."""

    frames: Iterator[torch.Tensor]
    num_frames: int
    fps: float
    audio: np.ndarray
    sample_rate: int
    crop_box: tuple[int, int, int, int]
    timeline: Timeline
    config: SonicConfig
    report: dict[str, Any] = field(default_factory=dict)
    job: PreparedJob | None = None

    @property
    def seconds(self) -> float:
        return self.num_frames / self.fps

    def collect(self) -> SonicOutput:
        """Run the stream to the end and hold every frame (short clips, tests)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(SonicOutput)}
        return SonicOutput(**dict(values, frames=torch.cat(list(self.frames))))


def report_progress(callback: ProgressCallback | None, stage: str, done: int, total: int) -> None:
    if callback is not None:
        callback(ProgressInfo(stage=stage, done=int(done), total=int(total)))
