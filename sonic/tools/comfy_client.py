"""Queue Sonic jobs on a running ComfyUI server: `python -m sonic queue ...`.

    python -m sonic queue --server http://127.0.0.1:8188 --workflow workflows/api/sonic_fast.json \\
        --image face.png --audio speech.wav --out results/ [--set inference_steps=10 ...]
    python -m sonic queue --server URL --workflow FILE --jobs jobs.csv --out results/

For every image x audio pair the client uploads both files (`POST /upload/image`, which takes
any file type), fills them into the workflow's image and audio loader nodes, applies the
`--set NAME=VALUE` overrides to every node that has that widget input, queues the graph
(`POST /prompt`), follows the server's websocket with a progress bar and downloads each MP4
the output nodes report (`GET /view`) into the output folder, never replacing a file there
unless asked. A failed job, including any malformed or oversized answer of the server, is
reported in one line and the batch goes on; each job has a wall-clock deadline. The exit
status is 1 when any job failed.

Only the given server is contacted. Pure standard library plus tqdm; no ComfyUI import. The
transport lives in `comfy_http` / `comfy_websocket`, the workflow conversion in `comfy_workflow`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ParameterError, SonicError
from ..files import require_regular_file
from .comfy_answers import ComfyConnectionError, expect, parse_json  # noqa: F401
from .comfy_http import UPLOAD_SUBFOLDER, ComfyClient  # noqa: F401
from .comfy_websocket import WebSocket  # noqa: F401
from .comfy_workflow import (AUDIO_LOADERS, IMAGE_LOADERS, apply_overrides, describe_prompt_error,  # noqa: F401
                             fill_media, is_ui_workflow, load_workflow, parse_set_options, ui_to_api, video_outputs)

DEFAULT_JOB_TIMEOUT = 3600.0  # seconds one job may take before the client gives up on it
MAX_JOBS_FILE_BYTES = 16 * 1024 * 1024


@dataclass
class Job:
    image: Path
    audio: Path
    name: str


@dataclass
class JobResult:
    job: Job
    ok: bool
    files: list[Path] = field(default_factory=list)
    message: str = ""
    seconds: float = 0.0


def read_jobs(path: Path) -> list[Job]:
    """Jobs from a CSV (columns image,audio[,name]) or JSON (list of {"image","audio"[,"name"]}) file.

    Relative paths are relative to the jobs file's folder.
    """
    path = require_regular_file(path, "jobs file", ParameterError)
    if path.stat().st_size > MAX_JOBS_FILE_BYTES:
        raise ParameterError(f"jobs file {path} is {path.stat().st_size:,} bytes; split it into smaller batches")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            rows = data.get("jobs", []) if isinstance(data, dict) else data
        elif path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        else:
            raise ParameterError(f"jobs file {path} must be .csv (columns image,audio) or .json")
    except (ValueError, RecursionError, csv.Error) as exc:
        raise ParameterError(f"jobs file {path} cannot be read ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(rows, list):
        raise ParameterError(f"jobs file {path} must hold a list of jobs, got a {type(rows).__name__}")
    jobs = []
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not row.get("image") or not row.get("audio"):
            raise ParameterError(f"jobs file {path}, entry {number}: needs 'image' and 'audio', got {row!r}"[:300])
        image, audio = (path.parent / str(row[k]).strip() for k in ("image", "audio"))
        jobs.append(Job(image, audio, _safe_name(str(row.get("name") or "").strip()) or f"{image.stem}__{audio.stem}"))
    return jobs


def _safe_name(name: str) -> str:
    """A job name usable as a file name: no folders, at most 100 characters."""
    return "".join(c if c.isalnum() or c in "-_. " else "_" for c in name).strip(". ")[:100]


def _unique_path(folder: Path, stem: str, suffix: str) -> Path:
    candidate, counter = folder / f"{stem}{suffix}", 2
    while candidate.exists():
        candidate, counter = folder / f"{stem}-{counter}{suffix}", counter + 1
    return candidate


def _content_name(path: Path) -> str:
    """Upload name that changes with the content (so the server's cache never serves a stale file)."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    return f"{path.stem}-{digest}{path.suffix}"


class JobRunner:
    """Runs jobs one after the other against one server, following each on the websocket."""

    def __init__(self, client: ComfyClient, prompt: dict, ui_workflow: dict | None, out_dir: Path, *,
                 job_timeout: float = DEFAULT_JOB_TIMEOUT, progress: bool = True, overwrite: bool = False):
        self.client, self.prompt, self.ui_workflow, self.out_dir = client, prompt, ui_workflow, out_dir
        self.job_timeout, self.progress, self.overwrite = job_timeout, progress, overwrite

    def run(self, job: Job) -> JobResult:
        started = time.monotonic()
        deadline = started + self.job_timeout
        try:
            for path, what in ((job.image, "image"), (job.audio, "audio")):
                require_regular_file(path, f"{what} file", ParameterError)
            image_name = self.client.upload(job.image, name=_content_name(job.image), deadline=deadline)
            audio_name = self.client.upload(job.audio, name=_content_name(job.audio), deadline=deadline)
            prompt = fill_media(json.loads(json.dumps(self.prompt)), image_name, audio_name)
            files = self._queue_and_fetch(prompt, job, deadline)
            return JobResult(job, True, files, f"wrote {', '.join(str(f) for f in files)}", time.monotonic() - started)
        except SonicError as exc:
            return JobResult(job, False, [], " ".join(str(exc).split()), time.monotonic() - started)
        except OSError as exc:  # reading the job's own files (permissions, a vanished file)
            return JobResult(job, False, [], f"{exc.strerror or exc}: {exc.filename or ''}", time.monotonic() - started)

    def _queue_and_fetch(self, prompt: dict, job: Job, deadline: float) -> list[Path]:
        ws = self.client.websocket(deadline=deadline)
        try:
            payload = {"prompt": prompt, "client_id": self.client.client_id}
            if self.ui_workflow is not None:
                payload["extra_data"] = {"extra_pnginfo": {"workflow": self.ui_workflow}}
            status, answer = self.client.post_json("/prompt", payload, deadline=deadline)
            if status != 200:
                raise SonicError(f"the server refused the workflow: {describe_prompt_error(answer)}")
            answer = expect(answer, dict, "the POST /prompt answer")
            prompt_id = expect(answer.get("prompt_id"), str, "the POST /prompt answer's 'prompt_id'")
            self._follow(ws, prompt_id, job, deadline)
        finally:
            ws.close()
        history = self.client.history(prompt_id, deadline=deadline)
        entries = video_outputs(history.get("outputs"))
        if not entries:
            raise SonicError("the workflow finished but no output node reported a video (is a Sonic Video Output or "
                             "SaveVideo node connected?)")
        files = []
        for index, entry in enumerate(entries):
            stem = job.name if len(entries) == 1 else f"{job.name}-{index + 1}"
            suffix = Path(str(entry["filename"])).suffix.lower()
            files.append(self._download(entry, stem, suffix, deadline))
        return files

    def _download(self, entry: dict, stem: str, suffix: str, deadline: float) -> Path:
        """Into the job's name; a name taken meanwhile (another batch) moves on to the next free one."""
        if self.overwrite:
            return self.client.download(entry, self.out_dir / f"{stem}{suffix}", overwrite=True, deadline=deadline)
        for _ in range(100):
            try:
                return self.client.download(entry, _unique_path(self.out_dir, stem, suffix), deadline=deadline)
            except SonicError as exc:
                if "created by someone else" not in str(exc):
                    raise
        raise SonicError(f"could not find a free file name for {stem}{suffix} in {self.out_dir}")

    def _follow(self, ws: WebSocket, prompt_id: str, job: Job, deadline: float) -> None:
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=1, desc=job.name, unit="step", leave=False, file=sys.stderr)
        next_poll = time.monotonic() + 5.0
        try:
            while time.monotonic() < deadline:
                message = ws.recv_json(timeout=1.0)
                if message is None:
                    if time.monotonic() >= next_poll:  # a missed message must not hang the batch
                        next_poll = time.monotonic() + 5.0
                        if self._finished_in_history(prompt_id, deadline):
                            return
                    continue
                kind, data = message.get("type"), message.get("data")
                data = data if isinstance(data, dict) else {}
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if kind == "progress" and bar is not None:
                    bar.total, bar.n = max(_number(data.get("max"), 1), 1), _number(data.get("value"), 0)
                    bar.refresh()
                elif kind == "execution_error":
                    raise SonicError(f"node {data.get('node_type')} failed: {data.get('exception_type', 'error')}: "
                                     f"{' '.join(str(data.get('exception_message', '')).split())}")
                elif kind == "execution_interrupted":
                    raise SonicError("the job was interrupted on the server")
                elif kind == "execution_success" or (kind == "executing" and data.get("node") is None
                                                     and data.get("prompt_id") == prompt_id):
                    return
            raise SonicError(f"no result after {self.job_timeout:.0f} s; the job may still be running on the server")
        finally:
            if bar is not None:
                bar.close()

    def _finished_in_history(self, prompt_id: str, deadline: float) -> bool:
        entry = self.client.get_object(f"/history/{prompt_id}", deadline=deadline).get(prompt_id)
        if not isinstance(entry, dict):
            return False
        status = entry.get("status")
        status = status if isinstance(status, dict) else {}
        if status.get("status_str") == "error":
            messages = status.get("messages")
            errors = [m for m in (messages if isinstance(messages, list) else [])
                      if isinstance(m, list) and len(m) > 1 and m[0] == "execution_error" and isinstance(m[1], dict)]
            detail = errors[-1][1].get("exception_message", "") if errors else ""
            raise SonicError(f"the job failed on the server: {' '.join(str(detail).split())}")
        return bool(status.get("completed"))


def _number(value, default: int) -> int:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return int(value) if ok else default
