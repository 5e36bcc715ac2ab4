"""The scheduler and the local executor: one worker process per device, models loaded once each.

Jobs go out longest-audio first; a free worker takes the next job that shares the portrait of its
last job when there is one (its prepared portrait is still in that worker's cache), else the
longest job left. A worker that dies is restarted and its job retried, up to `retries` extra
attempts per job; a job that raises is retried the same way.

Hook for the multi-GPU executor: `LocalExecutor(idle_hook=...)` is called whenever nothing is
left to hand out while some devices are idle, with the idle devices and the running jobs; a
window-parallel executor can use those devices to help the last long jobs finish sooner.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from ..errors import SonicError
from .jobs import Job


class WorkerStartError(SonicError):
    """A worker could not load the models: the batch cannot run."""


class Events(Protocol):
    def started(self, job: Job, worker: str) -> None: ...

    def finished(self, job: Job, result: dict) -> None: ...  # result: ok, seconds, error, video_seconds, reused


IdleHook = Callable[[list[str], list[Job]], None]


def pick_job(pending: list[Job], last_portrait: str | None) -> Job:
    """Remove and return the next job for a worker whose last job had `last_portrait`."""
    for index, job in enumerate(pending):
        if last_portrait is not None and job.portrait_key == last_portrait:
            return pending.pop(index)
    return pending.pop(0)


def default_devices() -> list[str]:
    """Every visible GPU, else one CPU worker."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(count)] or ["cpu"]


def parse_devices(text: str | None) -> list[str]:
    if not text:
        return default_devices()
    devices = []
    for item in (part.strip().lower() for part in text.split(",")):
        if item.isdigit():
            item = f"cuda:{item}"
        if not (item in ("cpu", "mps", "cuda") or (item.startswith("cuda:") and item[5:].isdigit())):
            from ..errors import ParameterError

            raise ParameterError(f"--devices takes a comma list of cpu, cuda:N (or N) and mps, got {item!r}")
        devices.append(item)
    return devices


@dataclass
class _Worker:
    slot: int
    device: str
    proc: subprocess.Popen
    ready: bool = False
    job: Job | None = None
    last_portrait: str | None = None
    fatal: str | None = None  # why the models did not load
    buffer: bytes = b""
    started_at: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return f"worker {self.slot} ({self.device})"

    def send(self, message: dict) -> bool:
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False


class LocalExecutor:
    def __init__(self, settings: dict, devices: list[str], *, retries: int = 2, idle_hook: IdleHook | None = None):
        self.settings, self.devices, self.retries, self.idle_hook = settings, devices, retries, idle_hook
        cpu_workers = sum(d == "cpu" for d in devices)
        self.cpu_threads = max(1, (os.cpu_count() or 1) // max(cpu_workers, 1))

    def parallelism(self, jobs: int) -> int:
        return max(1, min(len(self.devices), jobs))

    def _spawn(self, slot: int) -> _Worker:
        device = self.devices[slot]
        env = dict(os.environ)
        # The worker runs this very copy of the package, installed or not.
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        settings = dict(self.settings, device=device)
        if device.startswith("cuda:"):  # each worker sees only its GPU
            env["CUDA_VISIBLE_DEVICES"] = device[5:]
            settings["device"] = "cuda"
        if device == "cpu":
            env["OMP_NUM_THREADS"] = str(self.cpu_threads)
            settings["threads"] = self.cpu_threads
        proc = subprocess.Popen([sys.executable, "-m", "sonic.batch.worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env)
        worker = _Worker(slot, device, proc)
        worker.send({"settings": settings})
        return worker

    def run(self, jobs: list[Job], out_dir, events: Events) -> None:
        pending = list(jobs)
        if not pending:
            return
        selector = selectors.DefaultSelector()
        workers: dict[int, _Worker] = {}
        failed_starts = 0

        def start(slot: int) -> None:
            worker = self._spawn(slot)
            workers[slot] = worker
            selector.register(worker.proc.stdout, selectors.EVENT_READ, worker)

        try:
            for slot in range(self.parallelism(len(pending))):
                start(slot)
            while pending or any(w.job for w in workers.values()):
                for worker in workers.values():
                    if worker.ready and worker.job is None and pending:
                        job = pick_job(pending, worker.last_portrait)
                        job.attempt += 1
                        worker.job = job
                        events.started(job, worker.name)
                        worker.send({"job": job.spec(out_dir)})
                if not pending and self.idle_hook is not None:
                    idle = [w.device for w in workers.values() if w.ready and w.job is None]
                    if idle:
                        self.idle_hook(idle, [w.job for w in workers.values() if w.job is not None])
                for key, _ in selector.select(timeout=1.0):
                    worker = key.data
                    chunk = os.read(worker.proc.stdout.fileno(), 1 << 16)
                    if chunk:
                        worker.buffer += chunk
                        while b"\n" in worker.buffer:
                            line, worker.buffer = worker.buffer.split(b"\n", 1)
                            self._handle(worker, json.loads(line), pending, events)
                        continue
                    # The worker is gone: retry its job, start a fresh worker in its place.
                    selector.unregister(worker.proc.stdout)
                    code = worker.proc.wait()
                    for pipe in (worker.proc.stdin, worker.proc.stdout):
                        try:
                            pipe.close()
                        except OSError:
                            pass
                    if not worker.ready:
                        failed_starts += 1
                        if failed_starts >= 3 or worker.fatal:
                            raise WorkerStartError(worker.fatal or
                                                   f"{worker.name} exited with status {code} while loading the models")
                    if worker.job is not None:
                        self._failed_attempt(worker.job, f"the worker process died (exit status {code})",
                                             pending, events)
                        worker.job = None
                    if pending or any(w.job for w in workers.values()):
                        start(worker.slot)
        except BaseException:
            for worker in workers.values():  # interrupted or broken: no job may go on writing
                _stop(worker, at_once=True)
            raise
        finally:
            for worker in workers.values():
                _stop(worker)
            selector.close()

    def _handle(self, worker: _Worker, message: dict, pending: list[Job], events: Events) -> None:
        event = message.get("event")
        if event == "ready":
            worker.ready = True
        elif event == "fatal":
            worker.fatal = message.get("error")
        elif event == "result":
            job, worker.job = worker.job, None
            worker.last_portrait = job.portrait_key
            if message.get("ok"):
                events.finished(job, {"ok": True, **{k: message.get(k) for k in ("seconds", "video_seconds", "reused")}})
            else:
                self._failed_attempt(job, message.get("error") or "failed", pending, events)

    def _failed_attempt(self, job: Job, error: str, pending: list[Job], events: Events) -> None:
        if job.attempt <= self.retries:
            pending.insert(0, job)
        else:
            events.finished(job, {"ok": False, "error": error})


def _stop(worker: _Worker, at_once: bool = False) -> None:
    if at_once and worker.proc.poll() is None:
        worker.proc.kill()
    if worker.proc.poll() is None:
        try:
            worker.proc.stdin.close()
        except OSError:
            pass
        try:
            worker.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait()
