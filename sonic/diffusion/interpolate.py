"""2x frame-rate doubling with RIFE (12.5 fps -> 25 fps), batched and streamed (SPEC section 7).

Frame layout follows ComfyUI's IMAGE type: float32 [N, H, W, 3] in [0, 1]. Output order for
N input frames f_0..f_{N-1}:

    f_0, mid_0, f_1, mid_1, ..., f_{N-2}, mid_{N-2}, f_{N-1}, f_{N-1}

i.e. the official 2N-1 frames plus the last frame shown once more. At twice the frame rate that
gives 2N frames, so the doubled video lasts exactly as long as the input (N / 12.5 s) and stays
aligned with the audio; the official 2N-1 frames end one 25 fps frame (40 ms) early.

Sizes whose sides are not multiples of 16 (which the official code cannot handle) are padded by
edge replication to the next multiple of 16 and cropped back.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F

from ..errors import ParameterError
from ..models.rife import SIZE_MULTIPLE, IFNet


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


@torch.no_grad()
def interpolate_pairs(model: IFNet, frames_a: torch.Tensor, frames_b: torch.Tensor) -> torch.Tensor:
    """Middle frames of B pairs at once.

    Args:
        model: a loaded `IFNet` (fp32 is the reference; inputs are cast to its dtype).
        frames_a, frames_b: (B, 3, H, W) images in [0, 1], any device; any H, W >= 1 pixel.

    Returns:
        (B, 3, H, W) float32 in [0, 1] on the model's device: RIFE's output clamped as Sonic does.
    """
    if frames_a.shape != frames_b.shape or frames_a.dim() != 4 or frames_a.shape[1] != 3:
        raise ParameterError(f"interpolate_pairs needs two (B, 3, H, W) tensors of equal shape, "
                             f"got {tuple(frames_a.shape)} and {tuple(frames_b.shape)}")
    device, dtype = _model_device_dtype(model)
    height, width = frames_a.shape[-2:]
    pad_h = -height % SIZE_MULTIPLE
    pad_w = -width % SIZE_MULTIPLE

    def prepare(frames: torch.Tensor) -> torch.Tensor:
        frames = frames.to(device=device, dtype=dtype).contiguous()
        if pad_h or pad_w:
            # Replicate the right/bottom edges: no artificial black border for the flow to chase.
            frames = F.pad(frames, (0, pad_w, 0, pad_h), mode="replicate")
        return frames

    middle = model(prepare(frames_a), prepare(frames_b))
    return middle[..., :height, :width].float().clamp(0, 1)


def _check_chunk(chunk: torch.Tensor, size: tuple[int, int] | None) -> tuple[int, int]:
    if not isinstance(chunk, torch.Tensor) or chunk.dim() != 4 or chunk.shape[-1] != 3:
        shape = tuple(chunk.shape) if isinstance(chunk, torch.Tensor) else type(chunk).__name__
        raise ParameterError(f"frames must be [N, H, W, 3] tensors (ComfyUI IMAGE layout), got {shape}")
    if not chunk.is_floating_point():
        raise ParameterError(f"frames must be floating point in [0, 1], got dtype {chunk.dtype}")
    chunk_size = (int(chunk.shape[1]), int(chunk.shape[2]))
    if size is not None and chunk_size != size:
        raise ParameterError(f"all frames must have the same size; got {chunk_size[1]}x{chunk_size[0]} after "
                             f"{size[1]}x{size[0]} (width x height)")
    return chunk_size


def iter_double_frame_rate(model: IFNet, frames: torch.Tensor | Iterable[torch.Tensor], *, batch_size: int = 8,
                           device: torch.device | str | None = None) -> Iterator[torch.Tensor]:
    """Stream the doubled video: yields float32 CPU chunks [m, H, W, 3] in [0, 1] (order: module doc).

    Args:
        model: a loaded `IFNet`.
        frames: [N, H, W, 3] in [0, 1], or an iterable of such chunks (e.g. `sonic.diffusion.decode.decode_latents`).
            Chunks are consumed lazily; only `batch_size` + 1 input frames are held at a time.
        batch_size: frame pairs per RIFE call (memory vs speed on the device).
        device: where RIFE runs; moves the model there. None: leave the model where it is.
    """
    chunks = _checked_input(frames, batch_size)
    if device is not None:
        model.to(device)
    return _stream_doubled(lambda batches: [_doubled(model, batch) for batch in batches], chunks, batch_size, 1)


def iter_double_frame_rate_split(executor, models: list, frames: torch.Tensor | Iterable[torch.Tensor], *,
                                 batch_size: int = 8) -> Iterator[torch.Tensor]:
    """`iter_double_frame_rate` with the RIFE batches spread over the devices of `executor` (one
    `IFNet` per local device, from `executor.replicate`). The batches are the serial ones, so the
    frames are the same; they run in rounds of one per device and come out in order."""
    chunks = _checked_input(frames, batch_size)

    def run_round(batches: list[torch.Tensor]) -> list[torch.Tensor]:
        return executor.map(lambda worker, batch: _doubled(models[worker], batch), batches, to="cpu", tally=False)

    return _stream_doubled(run_round, chunks, batch_size, executor.num_workers)


def _checked_input(frames, batch_size) -> Iterator[torch.Tensor]:
    """The input as an iterator of chunks; checked here, not inside the generator, so mistakes surface at the call."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(frames, torch.Tensor):
        _check_chunk(frames, None)
        if frames.shape[0] == 0:
            raise ParameterError("no frames to interpolate: the input video is empty")
        frames = [frames]
    return iter(frames)


def _stream_doubled(run_round, chunks: Iterator[torch.Tensor], batch_size: int,
                    round_size: int) -> Iterator[torch.Tensor]:
    """Cut the stream into batches of `batch_size` + 1 frames (one of overlap) and double them
    `round_size` batches at a time with `run_round(batches) -> doubled batches`. A round holds
    batches of one shape (a distributed exchange needs that): the shorter last batch runs alone."""
    size: tuple[int, int] | None = None
    pending: torch.Tensor | None = None  # frames not yet batched; its last one waits for a successor
    ready: list[torch.Tensor] = []
    for chunk in chunks:
        size = _check_chunk(chunk, size)
        if chunk.shape[0] == 0:
            continue
        chunk = chunk.detach().to("cpu", torch.float32)
        pending = chunk if pending is None else torch.cat((pending, chunk))
        # Keep one frame of overlap: the last frame's middle needs the next chunk.
        while pending.shape[0] > batch_size:
            ready.append(pending[: batch_size + 1])
            pending = pending[batch_size:]
            if len(ready) == round_size:
                yield from run_round(ready)
                ready = []
    if pending is None:
        raise ParameterError("no frames to interpolate: the input video is empty")
    if ready:
        yield from run_round(ready)
    if pending.shape[0] > 1:
        yield from run_round([pending])
    last = pending[-1:].clamp(0, 1)
    yield torch.cat((last, last))


def _doubled(model: IFNet, frames: torch.Tensor) -> torch.Tensor:
    """[k+1, H, W, 3] -> [2k, H, W, 3]: f_0, mid_0, ..., f_{k-1}, mid_{k-1} (f_k is left for later)."""
    # Clamped like the decoded frames the official code feeds in (per batch: no copy of the whole video).
    frames = frames.clamp(0, 1)
    as_channels_first = frames.permute(0, 3, 1, 2)
    middles = interpolate_pairs(model, as_channels_first[:-1], as_channels_first[1:]).permute(0, 2, 3, 1).cpu()
    return torch.stack((frames[:-1], middles), dim=1).flatten(0, 1)


def double_frame_rate(model: IFNet, frames: torch.Tensor | Iterable[torch.Tensor], *, batch_size: int = 8,
                      device: torch.device | str | None = None) -> torch.Tensor | Iterator[torch.Tensor]:
    """Double the frame rate of a video (see the module doc for the 2N frame order).

    A tensor [N, H, W, 3] in gives one float32 CPU tensor [2N, H, W, 3] out; an iterable of
    chunks in gives an iterator of chunks out (`iter_double_frame_rate`), so a long video is never
    held in memory.
    """
    stream = iter_double_frame_rate(model, frames, batch_size=batch_size, device=device)
    if isinstance(frames, torch.Tensor):
        return torch.cat(list(stream))
    return stream
