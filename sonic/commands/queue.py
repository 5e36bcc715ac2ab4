"""`python -m sonic queue`: send Sonic jobs to one running ComfyUI server and download the MP4s.

Exit status 0 when every job succeeded, 1 otherwise (2 for a command that cannot start).
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import ParameterError
from ..tools.comfy_client import (DEFAULT_JOB_TIMEOUT, ComfyClient, Job, JobRunner, apply_overrides, load_workflow,
                                  parse_set_options, read_jobs)

HELP = "batch jobs through a running ComfyUI server"
DESCRIPTION = "Queue Sonic jobs on a running ComfyUI server and download the MP4s."


def add_arguments(parser) -> None:
    parser.add_argument("--server", required=True, help="ComfyUI URL, e.g. http://127.0.0.1:8188")
    parser.add_argument("--workflow", required=True, help="workflow JSON (API or UI format), e.g. workflows/api/sonic_fast.json")
    parser.add_argument("--image", help="portrait for a single job")
    parser.add_argument("--audio", help="speech for a single job")
    parser.add_argument("--jobs", help="CSV (image,audio[,name]) or JSON list of jobs instead of --image/--audio")
    parser.add_argument("--out", required=True, help="folder for the downloaded videos (created if missing)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a widget input on every node that has it (repeatable)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_JOB_TIMEOUT,
                        help="seconds allowed per job, uploads and downloads included (wall clock)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace videos already in --out (default: the next free name, e.g. NAME-2.mp4)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    if args.jobs and (args.image or args.audio):
        raise ParameterError("use either --jobs or --image/--audio, not both")
    if args.jobs:
        jobs = read_jobs(Path(args.jobs))
    elif args.image and args.audio:
        image, audio = Path(args.image), Path(args.audio)
        jobs = [Job(image, audio, f"{image.stem}__{audio.stem}")]
    else:
        raise ParameterError("give --image and --audio for one job, or --jobs FILE for many")
    if not jobs:
        raise ParameterError(f"the jobs file {args.jobs} lists no jobs")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise ParameterError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    overrides = parse_set_options(args.set)
    client = ComfyClient(args.server)
    client.get_json("/system_stats")  # fail fast, before any upload, when the server is not there
    prompt, ui_workflow = load_workflow(Path(args.workflow), client)
    apply_overrides(prompt, overrides)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    runner = JobRunner(client, prompt, ui_workflow, out_dir, job_timeout=args.timeout, progress=not args.quiet,
                       overwrite=args.overwrite)
    results = []
    for number, job in enumerate(jobs, 1):
        result = runner.run(job)
        results.append(result)
        mark = "ok  " if result.ok else "FAIL"
        print(f"[{number}/{len(jobs)}] {mark} {job.name} ({result.seconds:.1f} s): {result.message}", flush=True)
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)} of {len(results)} jobs succeeded" + (f", {len(failed)} failed" if failed else ""))
    return 1 if failed else 0
