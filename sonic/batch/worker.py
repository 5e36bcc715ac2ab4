"""A local batch worker process: `python -m sonic.batch.worker` (started by `sonic.batch.local`).

It talks JSON lines: stdin brings `{"settings": {...}}` once, then `{"job": spec}` lines (EOF ends
the worker); its original stdout carries `{"event": "ready" | "fatal" | "result", ...}` back. Any
other printing goes to stderr, so nothing can corrupt the protocol. The models load once, at start.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def main() -> int:
    import signal

    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the batch, which stops its workers
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints (ffmpeg, libraries) go to stderr

    def send(**message) -> None:
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    first = sys.stdin.readline()
    if not first:
        return 0
    settings = json.loads(first)["settings"]
    threads = settings.get("threads")
    try:
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        from .runner import JobRunner, load_pipeline

        runner = JobRunner(load_pipeline(settings))
    except Exception as exc:  # the models cannot load: the batch cannot run at all
        send(event="fatal", error=describe(exc))
        return 2
    send(event="ready", pid=os.getpid())
    for line in sys.stdin:
        spec = json.loads(line)["job"]
        try:
            result = runner.run(spec)
            send(event="result", job_id=spec["job_id"], ok=True, **result)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr) if settings.get("debug") else None
            send(event="result", job_id=spec["job_id"], ok=False, error=describe(exc))
    return 0


def _die_with_parent() -> None:
    """Linux: end this worker when the batch process dies, even by SIGKILL, so that no orphan goes on
    writing into the output folder while a rerun starts."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def describe(exc: BaseException) -> str:
    from ..errors import SonicError

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, SonicError) else f"{type(exc).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
