"""The Ray executor: the same jobs on a Ray cluster, one actor per GPU holding the loaded models.

    ray start --head                                   # machine 1
    ray start --address HEAD_IP:6379                   # every other machine
    python -m sonic batch jobs.csv --out-dir /shared/out --models /shared/checkpoints \\
        --executor ray --ray-address auto

Every actor asks for one GPU (`num_gpus=1`; on a cluster without GPUs: one actor with one CPU).
An actor whose process or node dies is restarted by Ray (`max_restarts`) and the job it was
running is retried by Ray (`max_task_retries`); a job that raises is retried by the scheduler,
up to `--retries` times in both cases. Inputs, models and OUT must be on a path every machine
sees (a shared file system): actors read the inputs and write the outputs and records themselves.
Ray is an optional dependency (`pip install -e .[ray]`). A local cluster uses every CPU unless
`SONIC_BATCH_RAY_CPUS` says how many (the tests use 2); `SONIC_*` variables reach its actors.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ParameterError
from .jobs import Job
from .local import WorkerStartError, pick_job

RESTARTS_PER_ACTOR = 8  # Ray restarts of one actor over the whole batch


def import_ray():
    try:
        import ray
    except ImportError:
        raise ParameterError("--executor ray needs Ray, which is not installed: pip install -e '.[ray]' "
                             "(or pip install ray)") from None
    return ray


class _Actor:
    """Holds the pipeline; `run` never raises for a job's own failure (the scheduler retries those)."""

    def __init__(self, settings: dict):
        from .runner import JobRunner, load_pipeline

        self.runner = JobRunner(load_pipeline(settings))

    def ready(self) -> int:
        return os.getpid()

    def run(self, spec: dict) -> dict:
        from .worker import describe

        try:
            return {"ok": True, **self.runner.run(spec)}
        except Exception as exc:
            return {"ok": False, "error": describe(exc)}


class RayExecutor:
    def __init__(self, settings: dict, *, address: str | None = None, retries: int = 2):
        self.ray = import_ray()
        self.settings, self.address, self.retries = settings, address, retries
        self._started = False

    def _start(self):
        ray = self.ray
        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, log_to_driver=True)
            else:  # a local cluster; this package's copy is what its workers import
                package_root = str(Path(__file__).resolve().parents[2])
                path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
                cpus = int(os.environ["SONIC_BATCH_RAY_CPUS"]) if os.environ.get("SONIC_BATCH_RAY_CPUS") else None
                env = {k: v for k, v in os.environ.items() if k.startswith("SONIC_")}  # settings and test hooks
                ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=True,
                         runtime_env={"env_vars": {**env, "PYTHONPATH": path}})
            self._started = True
        gpus = int(ray.cluster_resources().get("GPU", 0))
        settings = dict(self.settings, device="cuda" if gpus else "cpu")
        resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        actor_class = ray.remote(max_restarts=RESTARTS_PER_ACTOR, max_task_retries=self.retries,
                                 **resources)(_Actor)
        actors = [actor_class.remote(settings) for _ in range(max(gpus, 1))]
        try:
            ray.get([a.ready.remote() for a in actors])
        except ray.exceptions.RayError as exc:
            raise WorkerStartError(f"the Ray actors could not load the models: {str(exc).strip()[-500:]}") from None
        return actors

    def parallelism(self, jobs: int) -> int:
        return 1  # known once the cluster is joined; only used for the ETA

    def run(self, jobs: list[Job], out_dir, events) -> None:
        if not jobs:
            return
        ray = self.ray
        actors = self._start()
        try:
            self._schedule(ray, actors, list(jobs), out_dir, events)
        finally:
            for actor in actors:
                ray.kill(actor, no_restart=True)
            if self._started:
                ray.shutdown()

    def _schedule(self, ray, actors, pending: list[Job], out_dir, events) -> None:
        running: dict = {}  # object ref -> (actor index, job)
        last_portrait: list[str | None] = [None] * len(actors)
        while pending or running:
            busy = {index for index, _ in running.values()}
            for index in range(len(actors)):
                if index not in busy and pending:
                    job = pick_job(pending, last_portrait[index])
                    job.attempt += 1
                    events.started(job, f"ray actor {index}")
                    running[actors[index].run.remote(job.spec(out_dir))] = (index, job)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                index, job = running.pop(ref)
                last_portrait[index] = job.portrait_key
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the actor died and Ray's retries are spent
                    result = {"ok": False, "error": f"the Ray actor died: {type(exc).__name__}"}
                if result["ok"] or job.attempt > self.retries:
                    events.finished(job, result)
                else:
                    pending.insert(0, job)
