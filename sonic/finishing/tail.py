"""The end of every run, written once: RIFE 2x -> hold the last frame so the video ends with its
audio -> the soundtrack cut to the frames -> optional post-processing.

`SonicPipeline.stream` / `__call__`, the ComfyUI PostProcess node and the benchmark all call
`finish`, so the three can never disagree on frame counts, frame rates or the soundtrack.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator

import numpy as np
import torch

from ..inputs.portrait import PreparedPortrait
from ..job import PreparedJob, SonicOutput, SonicStream


def finish(pipe, job: PreparedJob, frames: torch.Tensor | Iterable[torch.Tensor], *, interpolate: bool,
           fps: float | None = None, postprocess=None, callback=None) -> SonicStream | SonicOutput:
    """Turn decoded frames into the video's frames and soundtrack.

    frames: float32 [N, H, W, 3] frames in [0, 1], a tensor or an iterator of chunks (streamed).
        When they are the job's own N generated frames, the last frame is held over the final
        partial 80 ms; frames from elsewhere (another node) keep their count.
    fps: their frame rate (default the model's 12.5). interpolate: RIFE 2x first.
    postprocess: `PostProcessOptions` or None. Without it the result is a `SonicStream` whose
        frames are produced while consumed; with it every frame is held (`SonicOutput`).
    """
    timeline = job.timeline
    if isinstance(frames, torch.Tensor):
        count, chunks = int(frames.shape[0]), iter((frames,))
    else:
        count, chunks = timeline.generated_frames, iter(frames)
    generated = count == timeline.generated_frames
    factor = 2 if interpolate else 1
    if interpolate:
        chunks = pipe.interpolate_iter(chunks, total=count, callback=callback)
    held = timeline.held_frames(interpolate) if generated else 0
    out_fps = (timeline.output_fps(False) if fps is None else float(fps)) * factor
    num_frames = count * factor + held
    stream = SonicStream(frames=_hold_last_frame(chunks, held), num_frames=num_frames, fps=out_fps,
                         audio=soundtrack_for(job, num_frames / out_fps), sample_rate=job.audio.original_rate,
                         crop_box=tuple(job.portrait.crop_box), timeline=timeline, config=job.config, job=job)
    if postprocess is None:
        return stream
    return apply_postprocess_to_output(stream.collect(), postprocess)


def apply_postprocess_to_output(out: SonicOutput, options) -> SonicOutput:
    from .postprocess import apply_postprocess

    portrait = out.job.portrait
    result = apply_postprocess(out.frames, out.fps, out.audio, out.sample_rate, options=options,
                               reference_crop=reference_image(portrait), crop_box=portrait.crop_box,
                               original_image=portrait.original, face_box_in_crop=face_box_in_frame(portrait))
    audio, rate = (out.audio, out.sample_rate) if result.audio is None else (result.audio, result.sample_rate)
    return dataclasses.replace(out, frames=result.frames, fps=result.fps, audio=audio, sample_rate=rate,
                               report={**out.report, "postprocess": result.report})


def soundtrack_for(job: PreparedJob, seconds: float) -> np.ndarray:
    """The original audio (its rate and channels) cut or zero-padded to exactly `seconds`."""
    original = job.audio.original
    wanted = int(round(seconds * job.audio.original_rate))
    if original.shape[1] >= wanted:
        return np.ascontiguousarray(original[:, :wanted])
    return np.pad(original, ((0, 0), (0, wanted - original.shape[1])))


def reference_image(portrait: PreparedPortrait) -> torch.Tensor:
    """The model-input picture as float32 [H, W, 3] in [0, 1] (what the frames should look like)."""
    return (portrait.pixels[0].permute(1, 2, 0) * 0.5 + 0.5).clamp(0, 1)


def face_box_in_frame(portrait: PreparedPortrait) -> tuple[float, float, float, float]:
    """The face box in generated-frame pixels (the crop scaled to the model resolution)."""
    cx1, cy1, cx2, cy2 = portrait.crop_box
    sx, sy = portrait.width / (cx2 - cx1), portrait.height / (cy2 - cy1)
    f = portrait.face_box
    return ((f.x1 - cx1) * sx, (f.y1 - cy1) * sy, (f.x2 - cx1) * sx, (f.y2 - cy1) * sy)


def _hold_last_frame(chunks: Iterator[torch.Tensor], copies: int) -> Iterator[torch.Tensor]:
    """Pass the chunks through, then repeat the very last frame `copies` times."""
    last = None
    for chunk in chunks:
        last = chunk
        yield chunk
    if copies > 0 and last is not None:
        yield last[-1:].expand(copies, *last.shape[1:]).clone()
