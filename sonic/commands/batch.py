"""`python -m sonic batch`: a resumable job list on local devices, a Ray cluster or ComfyUI servers.

Exit status 0 when every job is done, 1 when any failed or was invalid, 2 when the batch cannot
start (invalid rows without --skip-invalid, missing models, unreachable servers).
"""

from __future__ import annotations

import time
from pathlib import Path

from .generate import add_job_options, add_model_options

HELP = "resumable batch of jobs (CSV/JSONL) on local devices, Ray or ComfyUI servers"
DESCRIPTION = """Run every row of a job list; rerun the same command to resume after any interruption.

JOBS is a CSV file with a header row, or a JSONL file: `image` and `audio` (paths relative to the
file), an optional `output` (file name inside --out-dir) and any job option below by its name with
_ for - (seed, steps, min_resolution, face_box, no_crop, sync, ...) to override it for that row.
Finished jobs are recorded in OUT/.sonic-batch/ and skipped on a rerun; OUT/batch_report.json
lists every row's status."""
DEFAULT_WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "api" / "sonic_fast.json"


def add_arguments(parser) -> None:
    parser.add_argument("jobs", help="job list: .csv (header row) or .jsonl")
    parser.add_argument("--out-dir", required=True, help="folder for the MP4s, the records and the report")
    parser.add_argument("--models", help="weights folder (local and ray executors)")
    parser.add_argument("--executor", default="local", choices=["local", "ray", "comfyui"],
                        help="local worker processes (default), a Ray cluster, or ComfyUI servers")
    parser.add_argument("--skip-invalid", action="store_true", help="run the valid rows, record the others as invalid")
    parser.add_argument("--retries", type=int, default=2, help="extra attempts for a failed job (default 2)")
    parser.add_argument("--devices", help="local: comma list of cuda:N / cpu, one worker each "
                                          "(default: every visible GPU, else one CPU worker)")
    parser.add_argument("--ray-address", help="ray: the cluster to join, e.g. ray://head:10001 or auto "
                                              "(default: start a local one)")
    parser.add_argument("--server", action="append", default=[], metavar="URL",
                        help="comfyui: a ComfyUI server (repeat for several)")
    parser.add_argument("--workflow", default=str(DEFAULT_WORKFLOW),
                        help="comfyui: API-format workflow (default workflows/api/sonic_fast.json)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="comfyui: seconds allowed per job")
    add_model_options(parser)
    add_job_options(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar, one line per finished job")


def run(args) -> int:
    from ..batch.jobs import STATE_DIR, RecordStore, longest_first, make_jobs
    from ..batch.manifest import ManifestError, job_defaults, read_manifest
    from ..errors import OutputError, ParameterError

    started = time.monotonic()
    if args.retries < 0:
        raise ParameterError(f"--retries must be 0 or more, got {args.retries}")
    manifest = read_manifest(args.jobs, job_defaults(args))
    if manifest.problems and not args.skip_invalid:
        raise ManifestError(manifest.describe_problems())
    if manifest.problems:
        print(manifest.describe_problems().split("\n", 1)[1], flush=True)
    executor = make_executor(args, manifest.rows)  # everything checked before the output folder is touched
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out-dir {out_dir} is a file, not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    store = RecordStore(out_dir / STATE_DIR).open()
    try:
        events = BatchEvents(out_dir, store)
        for line in sorted({p.line for p in manifest.problems}):
            events.entries[line] = {"row": line, "output": None, "status": "invalid", "seconds": None,
                                    "error": "; ".join(p.message for p in manifest.problems if p.line == line)}
        todo = []
        for job in make_jobs(manifest.rows):
            record = store.done_record(job, out_dir)
            if record is None:
                todo.append(job)
            else:
                events.entries[job.row.line] = _entry(job, "done", record.get("seconds"), None,
                                                      skipped=True, video_seconds=record.get("video_seconds"))
        events.start_progress(todo, workers=executor.parallelism(len(todo)), quiet=args.quiet)
        try:
            executor.run(longest_first(todo), out_dir, events)
        except KeyboardInterrupt:
            print(f"interrupted: {events.done} finished job(s) are kept; run the same command again to do the rest")
            return 130
        finally:
            events.close()
        return events.finish(time.monotonic() - started)
    finally:
        store.close()


def make_executor(args, rows):
    """The chosen executor, with everything it needs checked (exit 2 before any output otherwise)."""
    from ..errors import ParameterError

    interpolation = any(not r.options["no_interpolate"] for r in rows)
    if args.executor == "comfyui":
        from ..batch.comfyui_executor import ComfyExecutor

        if not args.server:
            raise ParameterError("--executor comfyui needs at least one --server URL")
        return ComfyExecutor(args.server, Path(args.workflow), rows, retries=args.retries, job_timeout=args.timeout)
    if not args.models:
        raise ParameterError(f"--executor {args.executor} needs --models (the weights folder)")
    from ..weights import find_model_files

    find_model_files(args.models, need_interpolation=interpolation, svd_checkpoint=args.svd_checkpoint,
                     need_face_detector=False)
    settings = {"models": str(Path(args.models).resolve()), "dtype": args.dtype, "memory_policy": args.memory_policy,
                "svd_checkpoint": str(Path(args.svd_checkpoint).resolve()) if args.svd_checkpoint else None,
                "compile": args.compile, "interpolation": interpolation, "debug": args.debug}
    if args.executor == "ray":
        from ..batch.ray_executor import RayExecutor

        return RayExecutor(settings, address=args.ray_address, retries=args.retries)
    from ..batch.local import LocalExecutor, parse_devices

    return LocalExecutor(settings, parse_devices(args.devices), retries=args.retries)


def _entry(job, status, seconds, error, **extra) -> dict:
    return {"row": job.row.line, "output": job.output, "status": status,
            "seconds": round(seconds, 3) if seconds is not None else None, "error": error, "job_id": job.job_id,
            "audio_seconds": round(job.row.audio_seconds, 3), **extra}


class BatchEvents:
    """What the executors report: entries of the report, failure records, progress lines."""

    def __init__(self, out_dir: Path, store):
        self.out_dir, self.store = out_dir, store
        self.entries: dict[int, dict] = {}
        self.progress = None
        self.done = 0
        self.saved = 0  # portrait preparations reused

    def start_progress(self, todo, *, workers: int, quiet: bool) -> None:
        from ..batch.progress import BatchProgress

        self.progress = BatchProgress(len(todo), sum(j.row.audio_seconds for j in todo), workers, quiet=quiet)

    def started(self, job, worker: str) -> None:
        pass

    def finished(self, job, result: dict) -> None:
        from ..batch.jobs import base_record

        seconds = result.get("seconds")
        if result["ok"]:
            self.done += 1
            self.saved += bool(result.get("reused"))
            self.entries[job.row.line] = _entry(job, "done", seconds, None, attempts=job.attempt,
                                                video_seconds=result.get("video_seconds"),
                                                portrait_reused=bool(result.get("reused")))
            reused = ", portrait reused" if result.get("reused") else ""
            line = f"done   {job.output}: {job.row.audio_seconds:.1f} s of audio in {seconds:.1f} s{reused}"
        else:
            error = result.get("error") or "failed"
            self.store.write(job.job_id, base_record(job.spec(self.out_dir), "failed", seconds or 0.0, error))
            self.entries[job.row.line] = _entry(job, "failed", seconds, error, attempts=job.attempt)
            line = f"FAILED {job.output} (row {job.row.line}) after {job.attempt} attempt(s): {error}"
        if self.progress is not None:
            self.progress.job_finished(line, job.row.audio_seconds, seconds, result["ok"])

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()

    def finish(self, wall_seconds: float) -> int:
        from ..batch.jobs import summarize, summary_line, write_report

        entries = list(self.entries.values())
        summary = summarize(entries, wall_seconds=wall_seconds, saved_preparations=self.saved)
        report = write_report(self.out_dir, entries, summary)
        print(summary_line(summary, report), flush=True)
        return 0 if summary["done"] == summary["jobs"] else 1
