"""Progress over a batch: a bar with the elapsed time and an ETA from the measured seconds per
second of audio, and one line per finished job (`--quiet`: the lines only, for logs)."""

from __future__ import annotations

import sys
import time


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class BatchProgress:
    def __init__(self, total_jobs: int, total_audio_seconds: float, workers: int, *, quiet: bool = False):
        self.total, self.remaining_audio, self.workers = total_jobs, total_audio_seconds, max(workers, 1)
        self.finished = 0
        self.job_seconds = self.audio_seconds = 0.0  # of the jobs done so far: the measured rate
        self.start = time.monotonic()
        self.bar = None
        if not quiet and total_jobs:
            from tqdm import tqdm

            self.bar = tqdm(total=total_jobs, unit="job", file=sys.stderr, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} jobs, elapsed {elapsed}, {postfix}")
            self._refresh()

    def eta(self) -> float | None:
        if not self.audio_seconds:
            return None
        return self.remaining_audio * self.job_seconds / self.audio_seconds / self.workers

    def _refresh(self) -> None:
        if self.bar is not None:
            eta = self.eta()
            self.bar.set_postfix_str(f"ETA {clock(eta) if eta is not None else '?'}")

    def job_finished(self, line: str, audio_seconds: float, seconds: float | None, ok: bool) -> None:
        self.finished += 1
        self.remaining_audio = max(0.0, self.remaining_audio - audio_seconds)
        if ok and seconds:
            self.job_seconds += seconds
            self.audio_seconds += audio_seconds
        text = f"[{self.finished}/{self.total}] {line}"
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
            self.bar.update(1)
            self._refresh()
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
