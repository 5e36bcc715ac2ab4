"""Expensive encoders run once: one Whisper encoder pass per 30 s chunk, the CLIP image encoder once per job.

Counted with forward hooks on the real transformers modules of the tiny zoo (no mocks). The
official code runs CLIP twice per job (SPEC 2.4); the results are identical, so once is enough.
"""

from __future__ import annotations

import math

import pytest
import torch

from sonic import SonicConfig, SonicPipeline
from sonic.config import WHISPER_CHUNK_SAMPLES

from helpers import FACE, SR, speech_like


@pytest.fixture(scope="module")
def pipe(tiny_zoo, torch_threads):
    return SonicPipeline.from_pretrained(tiny_zoo, device="cpu", dtype="fp32", face_detector=False)


class CallCounter:
    """Counts forward calls of a module and the batch items they carried (a batched call counts each item)."""

    def __init__(self, module: torch.nn.Module, input_name: str):
        self.input_name = input_name
        self.batches: list[int] = []
        self.handle = module.register_forward_hook(self._seen, with_kwargs=True)

    def _seen(self, _module, args, kwargs, _output) -> None:
        first = args[0] if args else kwargs[self.input_name]
        self.batches.append(first.shape[0])

    @property
    def calls(self) -> int:
        return len(self.batches)

    @property
    def items(self) -> int:
        return sum(self.batches)


@pytest.fixture
def counters(pipe):
    whisper = CallCounter(pipe.models.whisper, "input_features")
    clip = CallCounter(pipe.models.image_encoder, "pixel_values")
    yield whisper, clip
    whisper.handle.remove()
    clip.handle.remove()


def test_a_whole_generation_runs_each_encoder_once(pipe, portrait, counters):
    whisper, clip = counters
    out = pipe(portrait, (speech_like(0.6), SR), face_box=FACE, min_resolution=64, inference_steps=1, seed=1)
    assert out.frames.shape[0] == 15  # the run really went through sampling, decoding and RIFE
    assert (whisper.calls, whisper.items) == (1, 1), f"Whisper batches per call: {whisper.batches}"
    assert (clip.calls, clip.items) == (1, 1), f"CLIP batches per call: {clip.batches}"
    # Per-run settings went into the job's config, not into the pipeline's.
    assert out.config.seed == 1 and out.config.inference_steps == 1
    assert pipe.config == SonicConfig()


@pytest.mark.parametrize("seconds, chunks", [(2.4, 1), (30.0, 1), (31.0, 2)])
def test_whisper_runs_once_per_30_s_chunk_and_clip_once(pipe, portrait, counters, seconds, chunks):
    """The conditioning stage is the only one that uses the encoders (the full run above shows that)."""
    whisper, clip = counters
    assert chunks == math.ceil(seconds * SR / WHISPER_CHUNK_SAMPLES)
    job = pipe.prepare(portrait, (speech_like(seconds), SR), face_box=FACE, min_resolution=64)
    cond = pipe.encode(job)
    assert cond.num_frames == job.timeline.generated_frames
    assert whisper.items == chunks, f"Whisper batches per call: {whisper.batches}"
    assert whisper.calls == chunks  # one 30 s chunk per pass, never the whole clip at once
    assert (clip.calls, clip.items) == (1, 1), f"CLIP batches per call: {clip.batches}"
