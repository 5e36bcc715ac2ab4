"""What makes a batch resumable: job identity, per-job records and the report.

A job's id is a hash of its inputs' contents, its settings and its output name. Each job ends by
writing its MP4 under a hidden name, then its record (status, seconds, settings, input hashes and
the MP4's hash), then renaming the MP4 into place; a rerun skips a job whose record says done and
whose output still has that hash, so a finished output is never written twice. Everything the
batch keeps lives in `OUT/.sonic-batch/`: `jobs/<id>.json` records, `work/` temporaries (emptied
at every start) and a lock so two batches never write into one folder at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import OutputError
from .manifest import Row

STATE_DIR = ".sonic-batch"
REPORT_NAME = "batch_report.json"
# Options that shape the prepared portrait (crop, face box, CLIP embedding, VAE latents); jobs equal
# in these and in the image's bytes share one preparation. The seed would join them only with
# noise_aug_strength > 0, which no command-line option sets.
PORTRAIT_OPTIONS = ("face_box", "face_index", "no_crop", "expand_ratio", "min_resolution", "max_image_pixels")


@dataclass
class Job:
    row: Row
    job_id: str
    portrait_key: str
    image_sha256: str
    audio_sha256: str
    attempt: int = 0  # attempts started so far

    @property
    def output(self) -> str:
        return self.row.output

    def spec(self, out_dir: Path) -> dict:
        """Everything a worker needs, as JSON (workers may live in other processes or machines)."""
        out_dir = Path(out_dir).resolve()
        return {"job_id": self.job_id, "row": self.row.line, "image": str(self.row.image.resolve()),
                "audio": str(self.row.audio.resolve()), "output": str(out_dir / self.output),
                "work": str(out_dir / STATE_DIR / "work" / f"{self.job_id}.mp4"),
                "state_dir": str(out_dir / STATE_DIR), "options": self.row.options,
                "portrait_key": self.portrait_key, "attempt": self.attempt,
                "image_sha256": self.image_sha256, "audio_sha256": self.audio_sha256,
                "audio_seconds": self.row.audio_seconds}


def make_jobs(rows: list[Row]) -> list[Job]:
    hashes: dict[Path, str] = {}

    def digest(path: Path) -> str:
        if path not in hashes:
            hashes[path] = file_sha256(path)
        return hashes[path]

    jobs = []
    for row in rows:
        image, audio = digest(row.image), digest(row.audio)
        settings = {k: v for k, v in row.options.items() if v is not None}
        job_id = _hash({"image": image, "audio": audio, "settings": settings, "output": row.output})[:20]
        portrait = _hash({"image": image, **{k: row.options.get(k) for k in PORTRAIT_OPTIONS}})[:20]
        jobs.append(Job(row, job_id, portrait, image, audio))
    return jobs


def longest_first(jobs: list[Job]) -> list[Job]:
    """Longest audio first (the longest-processing-time rule: no long job left for the end), then
    same-portrait jobs next to each other, then manifest order."""
    return sorted(jobs, key=lambda j: (-j.row.audio_seconds, j.portrait_key, j.row.line))


def file_sha256(path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class RecordStore:
    """The hidden folder of one output folder: job records, temporaries and the batch lock."""

    def __init__(self, state_dir):
        self.root = Path(state_dir)
        self.jobs = self.root / "jobs"
        self.work = self.root / "work"
        self._lock = None

    def open(self) -> "RecordStore":
        """Create the folders, take the lock and delete what an interrupted run left behind."""
        import fcntl

        for folder in (self.jobs, self.work):
            folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.root / "lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise OutputError(f"another batch is writing into {self.root.parent} right now; wait for it, "
                              f"or choose another --out-dir") from None
        self._lock = handle
        for leftover in [*self.work.iterdir(), *self.jobs.glob(".*.tmp")]:
            leftover.unlink(missing_ok=True)
        return self

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def read(self, job_id: str) -> dict | None:
        try:
            return json.loads((self.jobs / f"{job_id}.json").read_text())
        except (OSError, ValueError):
            return None

    def write(self, job_id: str, record: dict) -> None:
        write_json_atomic(self.jobs / f"{job_id}.json", record)

    def done_record(self, job: Job, out_dir: Path) -> dict | None:
        """The record of a finished job whose output is still the file it wrote, else None."""
        record = self.read(job.job_id)
        output = Path(out_dir) / job.output
        if not record or record.get("status") != "done" or not output.is_file():
            return None
        if output.stat().st_size != record.get("output_bytes") or file_sha256(output) != record.get("output_sha256"):
            return None
        return record


def base_record(spec: dict, status: str, seconds: float, error: str | None = None, **extra) -> dict:
    return {"job_id": spec["job_id"], "row": spec["row"], "output": Path(spec["output"]).name, "status": status,
            "seconds": round(float(seconds), 3), "attempts": spec["attempt"], "settings": spec["options"],
            "image": spec["image"], "audio": spec["audio"], "image_sha256": spec["image_sha256"],
            "audio_sha256": spec["audio_sha256"], "audio_seconds": spec["audio_seconds"], "error": error,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}


def finish_output(spec: dict, work: Path, seconds: float, **extra) -> dict:
    """Record a finished MP4, then move it into place (see the module docstring for the order)."""
    work = Path(work)
    record = base_record(spec, "done", seconds, output_sha256=file_sha256(work), output_bytes=work.stat().st_size,
                         **extra)
    RecordStore(spec["state_dir"]).write(spec["job_id"], record)
    os.replace(work, spec["output"])
    return record


def write_report(out_dir: Path, entries: list[dict], summary: dict) -> Path:
    path = Path(out_dir) / REPORT_NAME
    write_json_atomic(path, {"jobs": sorted(entries, key=lambda e: e["row"]), "summary": summary})
    return path


def summarize(entries: list[dict], *, wall_seconds: float, saved_preparations: int) -> dict:
    counts = {s: sum(e["status"] == s for e in entries) for s in ("done", "failed", "invalid")}
    return {**counts, "jobs": len(entries), "skipped": sum(bool(e.get("skipped")) for e in entries),
            # made by this run (jobs skipped as done before are not counted)
            "video_seconds": round(sum(e.get("video_seconds") or 0.0 for e in entries
                                       if e["status"] == "done" and not e.get("skipped")), 3),
            "wall_seconds": round(wall_seconds, 3), "preparations_saved": saved_preparations}


def summary_line(summary: dict, report: Path) -> str:
    parts = [f"{summary['done']} of {summary['jobs']} jobs done"]
    if summary["skipped"]:
        parts.append(f"{summary['skipped']} of them already done before")
    for status in ("failed", "invalid"):
        if summary[status]:
            parts.append(f"{summary[status]} {status}")
    parts.append(f"{summary['video_seconds']:.1f} s of video made in {summary['wall_seconds']:.1f} s")
    parts.append(f"{summary['preparations_saved']} portrait preparation(s) saved")
    return "batch: " + ", ".join(parts) + f"; report {report}"
