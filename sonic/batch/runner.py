"""One job inside a worker that holds the loaded models (a local worker process or a Ray actor).

Jobs that share a portrait and its settings (`portrait_key`) reuse its preparation: the crop, the
face box, the CLIP embedding and the VAE latents (`SonicPipeline.prepare(portrait=...)` and
`encode(portrait_encoding=...)`); the scheduler sends such jobs to the same worker.

Test hooks (environment variables naming an output file; used by the tests, harmless otherwise):
`SONIC_BATCH_TEST_CRASH=name.mp4` ends the worker process with `os._exit` in the middle of that
job once (a marker file in the work folder remembers it); `SONIC_BATCH_TEST_FAIL=name.mp4` makes every attempt of that job raise.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from pathlib import Path

from .jobs import finish_output
from .manifest import plan_from_options

CRASH_HOOK, FAIL_HOOK = "SONIC_BATCH_TEST_CRASH", "SONIC_BATCH_TEST_FAIL"
CRASH_EXIT_CODE = 86


class PortraitCache:
    """The last few prepared portraits of a worker: key -> (PreparedPortrait, encode_portrait result)."""

    def __init__(self, size: int = 8):
        self.size = size
        self.entries: OrderedDict[str, tuple] = OrderedDict()
        self.saved = 0  # preparations reused instead of recomputed

    def get(self, key: str):
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
            self.saved += 1
        return entry

    def put(self, key: str, entry: tuple) -> None:
        self.entries[key] = entry
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


def load_pipeline(settings: dict):
    """The worker's pipeline, loaded once: `settings` holds models, device, dtype, memory_policy,
    svd_checkpoint, compile and interpolation."""
    from ..pipeline import SonicPipeline

    pipe = SonicPipeline.from_pretrained(settings["models"], device=settings.get("device"),
                                         dtype=settings.get("dtype", "auto"),
                                         memory_policy=settings.get("memory_policy", "keep"),
                                         svd_checkpoint=settings.get("svd_checkpoint"), face_detector="auto",
                                         interpolation=settings.get("interpolation", True))
    if settings.get("compile"):
        pipe.models.unet.compile()
    return pipe


class JobRunner:
    """Runs job specs (`Job.spec`) on one pipeline; each ends with its MP4 and record in place."""

    def __init__(self, pipe, cache: PortraitCache | None = None):
        self.pipe = pipe
        self.cache = cache or PortraitCache()

    def run(self, spec: dict) -> dict:
        """Generate one job; returns {"seconds", "video_seconds", "reused"}. Raises on failure."""
        from ..commands.generate import provenance
        from ..media.video import write_mp4

        started = time.perf_counter()
        plan = plan_from_options(spec["options"])
        image, audio = spec["image"], spec["audio"]
        prepared = self.cache.get(spec["portrait_key"])
        reused = prepared is not None
        if prepared is None:
            job = self.pipe.prepare(image, audio, face_box=plan.face_box, face_index=plan.face_index,
                                    duration=plan.duration, config=plan.config)
            prepared = (job.portrait, self.pipe.encode_portrait(job))
            self.cache.put(spec["portrait_key"], prepared)
        _test_faults(spec)
        settings = dict(face_box=plan.face_box, face_index=plan.face_index, duration=plan.duration,
                        config=plan.config, portrait=prepared[0], portrait_encoding=prepared[1])
        if plan.postprocess is not None:
            out = self.pipe(image, audio, postprocess=plan.postprocess, **settings)
        else:  # the frames stream from the decoder into the encoder
            out = self.pipe.stream(image, audio, **settings)
        metadata = provenance(image, audio, out.config, extra=out.report)
        metadata["batch_job"] = spec["job_id"]
        work = Path(spec["work"])
        work.unlink(missing_ok=True)
        write_mp4(work, out.frames, fps=out.fps, audio=out.audio, sample_rate=out.sample_rate, crf=plan.crf,
                  preset=plan.preset, metadata=metadata)
        seconds = time.perf_counter() - started
        finish_output(spec, work, seconds, video_seconds=round(out.seconds, 3), portrait_reused=reused,
                      worker_pid=os.getpid())
        _crash_marker(spec).unlink(missing_ok=True)
        return {"seconds": seconds, "video_seconds": out.seconds, "reused": reused}


def _crash_marker(spec: dict) -> Path:
    return Path(spec["state_dir"]) / "work" / f"{spec['job_id']}.crashed"


def _test_faults(spec: dict) -> None:
    name = Path(spec["output"]).name
    marker = _crash_marker(spec)
    if os.environ.get(CRASH_HOOK) == name and not marker.exists():  # once per job, whoever retries it
        marker.touch()
        os._exit(CRASH_EXIT_CODE)
    if os.environ.get(FAIL_HOOK) == name:
        raise RuntimeError(f"test hook {FAIL_HOOK} failed this job on purpose")
