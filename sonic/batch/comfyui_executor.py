"""The ComfyUI executor: jobs go to a fleet of ComfyUI servers (one per GPU), each to the least busy.

Every job is the API-format preset (`--workflow`) with the row's inputs uploaded and its options
set on the nodes that take them; it is queued on the server with the shortest `/queue` (running +
pending prompts, counting jobs this batch chose but has not posted yet), followed on the server's
websocket, and its MP4 fetched from `/view` into the hidden work folder, then recorded and moved
into place like every other executor's outputs. One sending thread per server. Reuses the
single-server client of `python -m sonic queue` (`sonic.tools.comfy_client`).
"""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path

from ..errors import ParameterError, SonicError
from ..tools.comfy_client import ComfyClient, ComfyConnectionError, JobRunner, apply_overrides, load_workflow
from ..tools.comfy_client import Job as ComfyJob
from .jobs import Job, finish_output

# generate option -> the preset's widget input taking it (face_box, sync and the flags are special).
OPTION_INPUTS = {"steps": "inference_steps", "seed": "seed", "min_resolution": "min_resolution",
                 "expand_ratio": "expand_ratio", "face_index": "face_index", "duration": "duration",
                 "dynamic_scale": "dynamic_scale", "motion_scale": "motion_scale",
                 "i2i_noise_strength": "i2i_noise_strength", "decode_chunk_size": "decode_chunk_size",
                 "crf": "crf", "preset": "preset", "smooth": "smoothing", "output_fps": "output_fps",
                 "color_match": "colour_match", "paste_back": "paste_back"}


def workflow_overrides(options: dict) -> dict[str, str]:
    """The widget values a row sets: only options given on the command line or in the row (the
    preset keeps its own values for the rest)."""
    from .manifest import job_option_actions

    defaults = {dest: action.default for dest, action in job_option_actions().items()}
    given = {k: v for k, v in options.items() if v is not None and v != defaults.get(k)}
    overrides = {}
    for name, value in given.items():
        if name in OPTION_INPUTS:
            overrides[OPTION_INPUTS[name]] = str(value)
        elif name == "no_crop":
            overrides["crop"] = "false"
        elif name == "no_interpolate":
            overrides["interpolation"] = "false"
        elif name == "face_box":
            full = str(value).strip().lower() == "full"
            overrides.update({"face": "full_image" if full else "box", **({} if full else {"face_box": str(value)})})
        elif name == "sync":
            mode = str(value).strip().lower()
            overrides.update({"lip_sync": mode} if mode in ("off", "auto") else
                             {"lip_sync": "manual", "sync_offset_ms": str(value)})
        else:
            raise ParameterError(f"{name} cannot be set through a ComfyUI workflow; use the local or ray executor")
    return overrides


class ComfyExecutor:
    def __init__(self, servers: list[str], workflow: Path, rows, *, retries: int = 2, job_timeout: float = 3600.0):
        self.clients = [ComfyClient(url) for url in servers]
        for client in self.clients:  # fail fast, before anything is written, when a server is not there
            client.get_json("/system_stats")
        self.prompt, self.ui_workflow = load_workflow(workflow, self.clients[0])
        self.retries, self.job_timeout = retries, job_timeout
        problems = []
        for row in rows:  # every row's settings must fit the workflow
            try:
                apply_overrides(copy.deepcopy(self.prompt), workflow_overrides(row.options))
            except ParameterError as exc:
                problems.append(f"  line {row.line}: {str(exc).replace('--set ', '')}")
        if problems:
            raise ParameterError(f"{len(problems)} row(s) do not fit the workflow {workflow}:\n" + "\n".join(problems))
        self._lock = threading.Lock()
        self._claimed = [0] * len(self.clients)  # chosen, not yet posted (not in /queue yet)

    def parallelism(self, jobs: int) -> int:
        return max(1, min(len(self.clients), jobs))

    def run(self, jobs: list[Job], out_dir, events) -> None:
        pending = list(jobs)
        results: list[tuple[Job, dict]] = []
        condition = threading.Condition()
        errors: list[BaseException] = []

        def sender() -> None:
            while True:
                with condition:
                    if not pending:
                        return
                    job = pending.pop(0)
                    job.attempt += 1
                try:
                    result = self._run_one(job, out_dir)
                except BaseException as exc:  # a bug: stop the batch, report it in the main thread
                    errors.append(exc)
                    return
                with condition:
                    if not result["ok"] and job.attempt <= self.retries:
                        pending.insert(0, job)
                    else:
                        results.append((job, result))
                    condition.notify_all()

        threads = [threading.Thread(target=sender, daemon=True) for _ in range(self.parallelism(len(jobs)))]
        for thread in threads:
            thread.start()
        reported = 0
        while any(t.is_alive() for t in threads) or reported < len(results):
            with condition:
                condition.wait(timeout=0.5)
                batch, reported = results[reported:], len(results)
            for job, result in batch:  # events run in the main thread only
                events.finished(job, result)
            if errors:
                raise errors[0]

    def _least_busy(self) -> int:
        with self._lock:
            loads = []
            for index, client in enumerate(self.clients):
                try:
                    queue = client.get_json("/queue")
                    load = len(queue.get("queue_running", [])) + len(queue.get("queue_pending", []))
                except ComfyConnectionError:
                    load = float("inf")  # unreachable now: chosen only when every server is
                loads.append(load + self._claimed[index])
            index = min(range(len(loads)), key=lambda i: (loads[i], i))
            self._claimed[index] += 1
            return index

    def _run_one(self, job: Job, out_dir) -> dict:
        spec = job.spec(out_dir)
        started = time.perf_counter()
        index = self._least_busy()
        client = self.clients[index]
        prompt = apply_overrides(copy.deepcopy(self.prompt), workflow_overrides(spec["options"]))
        work_dir = Path(spec["work"]).parent / job.job_id
        work_dir.mkdir(parents=True, exist_ok=True)
        for old in work_dir.iterdir():
            old.unlink()
        posted = []

        def on_posted() -> None:
            posted.append(True)
            self._posted(index)

        runner = PostingRunner(client, prompt, self.ui_workflow, work_dir, job_timeout=self.job_timeout,
                               progress=False, on_posted=on_posted)
        result = runner.run(ComfyJob(Path(spec["image"]), Path(spec["audio"]), job.job_id))
        if not posted:  # it failed before reaching the queue
            self._posted(index)
        seconds = time.perf_counter() - started
        if not result.ok:
            return {"ok": False, "error": f"{client.base}: {result.message}", "seconds": seconds}
        try:
            from ..media.probe import probe

            video_seconds = probe(result.files[0])["video_duration"]
            finish_output(spec, result.files[0], seconds, video_seconds=video_seconds, server=client.base)
        except SonicError as exc:
            return {"ok": False, "error": str(exc), "seconds": seconds}
        finally:
            for leftover in work_dir.iterdir():
                leftover.unlink()
            work_dir.rmdir()
        return {"ok": True, "seconds": seconds, "video_seconds": video_seconds, "server": client.base}

    def _posted(self, index: int) -> None:
        with self._lock:
            self._claimed[index] = max(0, self._claimed[index] - 1)


class PostingRunner(JobRunner):
    """The queue client's runner, telling the executor once the prompt is in the server's queue."""

    def __init__(self, *args, on_posted, **kwargs):
        super().__init__(*args, **kwargs)
        self.on_posted = on_posted

    def _follow(self, ws, prompt_id, job, deadline):
        self.on_posted()
        return super()._follow(ws, prompt_id, job, deadline)
