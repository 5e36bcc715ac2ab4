"""Correlation-vs-lag curves of sync reports, drawn into a PNG with OpenCV only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import OutputError

PLOT_COLOURS = ((200, 60, 40), (40, 120, 200), (60, 160, 60), (150, 80, 170))  # RGB


def check_plot_path(path) -> Path:
    """The plot's path, if a PNG can be written there (OutputError otherwise): cheap, so checked first."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"the plot path {str(path)!r} is a folder; give a file name ending in .png, "
                          f"e.g. {str(path / 'sync.png')!r}")
    if path.suffix.lower() != ".png":
        raise OutputError(f"the plot path {str(path)!r} does not end in .png; the plot is a PNG image, "
                          f"e.g. {str(path.with_suffix('.png'))!r}")
    parent = path.parent
    if not parent.is_dir():
        what = "is a file, not a folder" if parent.exists() else "does not exist"
        raise OutputError(f"the plot's folder {str(parent)!r} {what}; create the folder or choose another path")
    return path


def plot_lag_curves(reports: dict, path, *, title: str = "audio/mouth correlation vs lag") -> None:
    """Draw correlation-vs-lag curves (one per labelled `SyncReport`) into a PNG, with OpenCV only.

    A clip in sync peaks at 0 ms; the peak's lag is the offset (positive: mouth after sound).
    """
    import cv2

    check_plot_path(path)
    width, height, left, right, top, bottom = 880, 420, 70, 20, 50, 60
    canvas = np.full((height, width, 3), 255, np.uint8)
    plot_w, plot_h = width - left - right, height - top - bottom
    lag_max = max(max(abs(v) for v in r.lag_curve_ms) for r in reports.values())

    def to_px(lag_ms: float, r: float) -> tuple[int, int]:
        return (int(left + (lag_ms + lag_max) / (2 * lag_max) * plot_w), int(top + (1 - (r + 1) / 2) * plot_h))

    font = cv2.FONT_HERSHEY_SIMPLEX
    for r in (-1.0, -0.5, 0.0, 0.5, 1.0):
        y = to_px(0, r)[1]
        cv2.line(canvas, (left, y), (left + plot_w, y), (225, 225, 225), 1)
        cv2.putText(canvas, f"{r:+.1f}", (8, y + 5), font, 0.45, (90, 90, 90), 1, cv2.LINE_AA)
    for lag in np.arange(-lag_max, lag_max + 1, 100):
        x = to_px(lag, 0)[0]
        cv2.line(canvas, (x, top), (x, top + plot_h), (235, 235, 235) if lag else (160, 160, 160), 1)
        cv2.putText(canvas, f"{lag:+.0f}", (x - 18, top + plot_h + 20), font, 0.45, (90, 90, 90), 1, cv2.LINE_AA)
    cv2.putText(canvas, "lag (ms): positive = mouth moves after the sound", (left + 150, height - 12), font, 0.5,
                (60, 60, 60), 1, cv2.LINE_AA)
    cv2.putText(canvas, title, (left, 30), font, 0.65, (20, 20, 20), 1, cv2.LINE_AA)
    for index, (label, report) in enumerate(reports.items()):
        colour = PLOT_COLOURS[index % len(PLOT_COLOURS)]
        points = np.array([to_px(lag, r) for lag, r in zip(report.lag_curve_ms, report.lag_curve_r)], np.int32)
        cv2.polylines(canvas, [points], False, colour, 2, cv2.LINE_AA)
        peak = to_px(report.offset_ms, report.peak_correlation)
        cv2.circle(canvas, peak, 5, colour, -1, cv2.LINE_AA)
        text = f"{label}: offset {int(round(report.offset_ms)):+d} ms, confidence {report.confidence:.1f}"
        cv2.putText(canvas, text, (left + 10, top + plot_h - 40 + 22 * index - 22 * (len(reports) - 2)), font, 0.5,
                    colour, 1, cv2.LINE_AA)
    try:
        written = cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    except cv2.error:
        written = False
    if not written:
        raise OutputError(f"could not write the plot to {str(path)!r}; check that its folder exists and is writable")
