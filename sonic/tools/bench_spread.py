"""The multi-device part of a bench report: how the windows were spread, ideal and measured speed-up.

Ideal (UNet stage only, equal units): `W / ceil(W / G)` for W units per step over G devices.
Measured: a 1-device report of the same settings (`--baseline one.json`) divided by this run,
for the sampling stage and for the whole job (Amdahl: decode, RIFE and encoding stay mostly serial).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..diffusion.executors import ideal_speedup, static_assignment
from ..diffusion.windows import work_units
from ..errors import ParameterError


def spread_record(executor, report: dict, baseline_path: str | None, config) -> dict[str, Any]:
    windows = -(-report["video"]["generated_frames"] // (config.frames_per_window - config.window_overlap))
    units = len(work_units(windows, executor.num_workers))
    workers = executor.num_workers
    if executor.kind == "distributed":
        per_device = static_assignment(units, workers)
    else:
        done = sum(executor.unit_counts.values()) or 1
        per_device = [round(units * executor.unit_counts[w] / done, 2) for w in range(workers)]
    record = {"executor": executor.kind, "devices": workers, "units_per_step": units,
              "units_per_device_per_step": per_device, "ideal_unet_speedup": ideal_speedup(units, workers),
              "baseline": baseline_path, "measured_sampling_speedup": None, "measured_total_speedup": None}
    if baseline_path:
        try:
            base = json.loads(Path(baseline_path).expanduser().read_text())
        except (OSError, ValueError) as exc:
            raise ParameterError(f"--baseline {baseline_path!r} is not a readable bench JSON report: {exc}") from None
        record["measured_sampling_speedup"] = base["stages"]["sampling"]["seconds"] / report["stages"]["sampling"]["seconds"]
        record["measured_total_speedup"] = base["total_seconds"] / report["total_seconds"]
    return record


def format_spread(record: dict) -> str:
    counts = "+".join(f"{c:g}" for c in record["units_per_device_per_step"])
    line = (f"spread ({record['executor']}): {record['units_per_step']} units/step over {record['devices']} devices: "
            f"{counts}; ideal UNet speed-up {record['ideal_unet_speedup']:.2f}")
    if record["measured_sampling_speedup"] is not None:
        line += (f"; measured vs {record['baseline']}: sampling {record['measured_sampling_speedup']:.2f}x, "
                 f"whole job {record['measured_total_speedup']:.2f}x")
    return line
