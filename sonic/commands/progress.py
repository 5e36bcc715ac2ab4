"""The progress display of `python -m sonic generate`: one bar per pipeline stage, plus a total bar
with the ETA of the whole run.

Decode and interpolation are streamed (a decoded chunk is interpolated before the next one is
decoded), so their bars stay open side by side instead of being restarted on every switch. Each
bar's clock starts when its stage could start (the previous progress event of any stage), and
its rate is the plain average over that time, in the stage's own unit.
"""

from __future__ import annotations

import time

# stage -> (label, unit, rough share of a run's time at 512 px on a GPU: the UNet dominates).
STAGES = {
    "conditioning": ("encode", "part", 0.02),
    "sampling": ("sample", "UNet call", 0.85),
    "decode": ("decode", "frame", 0.08),
    "interpolate": ("interpolate", "frame", 0.05),
}
TOTAL_LABEL = "total"


class StageProgress:
    """Feed it `ProgressInfo` callbacks; `stages` lists the stages this run will report (for the ETA)."""

    def __init__(self, enabled: bool = True, stages=("conditioning", "sampling", "decode", "interpolate"), file=None):
        self.enabled = enabled
        self.weights = {stage: STAGES[stage][2] for stage in stages if stage in STAGES}
        self.file = file
        self.bars: dict[str, object] = {}
        self.finished: set[str] = set()
        self.fractions: dict[str, float] = {}
        self.total_bar = None
        self.last_event = time.time()

    def __call__(self, info) -> None:
        if not self.enabled:
            return
        now = time.time()
        if info.stage in self.finished:
            return
        bar = self.bars.get(info.stage) or self._open(info.stage, info.total, start=self.last_event)
        bar.total = max(int(info.total), 1)
        unit = STAGES.get(info.stage, (None, "step"))[1]
        bar.set_postfix_str(rate_text(info.done, now - bar.start_t, unit), refresh=False)
        bar.update(int(info.done) - bar.n)
        self.last_event = now
        self.fractions[info.stage] = min(1.0, info.done / max(info.total, 1))
        self._update_total()
        if info.done >= info.total:  # its line freezes with the stage's own time and rate
            bar.close()
            self.finished.add(info.stage)

    def _open(self, stage: str, total: int, *, start: float):
        if self.total_bar is None and self.weights:
            self.total_bar = self._bar(TOTAL_LABEL, 100, start=start, position=0,
                                       bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")
        bar = self._bar(STAGES.get(stage, (stage,))[0], total, start=start, position=len(self.bars) + 1,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")
        self.bars[stage] = bar
        return bar

    def _bar(self, label, total, *, start, position, bar_format):
        import sys

        from tqdm import tqdm

        stream = self.file or sys.stderr
        # Stacked bars move the cursor: only on a terminal; a log gets plain lines.
        stacked = {"position": position} if getattr(stream, "isatty", lambda: False)() else {}
        # smoothing=0: the remaining time comes from the stage's average rate, not from the last burst.
        bar = tqdm(total=max(int(total), 1), desc=label, smoothing=0, leave=True, dynamic_ncols=True, file=stream,
                   bar_format=bar_format, **stacked)
        bar.start_t = bar.last_print_t = start
        return bar

    def _update_total(self) -> None:
        if self.total_bar is None:
            return
        weight = sum(self.weights.values())
        done = sum(w * self.fractions.get(stage, 0.0) for stage, w in self.weights.items()) / weight
        self.total_bar.update(round(100 * done, 1) - self.total_bar.n)

    def close(self) -> None:
        for stage, bar in self.bars.items():
            if stage not in self.finished:
                bar.close()
        if self.total_bar is not None:
            self.total_bar.close()
        self.bars, self.total_bar, self.finished = {}, None, set()


def rate_text(done: float, seconds: float, unit: str) -> str:
    """'12.3 frames/s' or, below one per second, '4.56 s/UNet call' (average since the stage began)."""
    if done <= 0 or seconds <= 0:
        return f"? {unit}s/s"
    rate = done / seconds
    return f"{rate:.3g} {unit}s/s" if rate >= 1 else f"{1 / rate:.3g} s/{unit}"
