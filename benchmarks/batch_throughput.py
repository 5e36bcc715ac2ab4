"""Batch throughput of the local executor: seconds of video per hour with 1 and 2 CPU workers.

    python benchmarks/batch_throughput.py [--jobs 8] [--seconds 1.5] [--json OUT.json]

Builds the tiny zoo and a manifest of `--jobs` jobs (two portraits, different audios of
`--seconds` each, 64 px, 1 step) in a temporary folder, then runs `python -m sonic batch` once
with `--devices cpu` and once with `--devices cpu,cpu` (each worker gets cores / workers threads)
into fresh output folders. Throughput = seconds of video written / wall seconds of the whole
command (start-up and model loading included) x 3600. The ratio 2 workers / 1 worker shows what
job parallelism buys on this machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_inputs(root: Path, jobs: int, seconds: float) -> Path:
    import numpy as np
    import soundfile as sf
    from PIL import Image

    sys.path.insert(0, str(REPO))
    from sonic.tools.zoo import write_tiny_zoo

    write_tiny_zoo(root / "zoo", layout="official")
    rng = np.random.default_rng(0)
    for name in ("anna", "ben"):
        img = np.full((80, 72, 3), 90, np.uint8)
        img[20:60, 18:54] = (200, 160, 140)
        Image.fromarray(np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)).save(root / f"{name}.png")
    t = np.arange(int(seconds * 16000)) / 16000
    lines = ["image,audio,output"]
    for index in range(jobs):
        voice = 0.3 * np.sin(2 * np.pi * (150 + 10 * index) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
        sf.write(root / f"talk{index}.wav", voice.astype(np.float32), 16000)
        lines.append(f"{'anna' if index % 2 else 'ben'}.png,talk{index}.wav,clip{index}.mp4")
    (root / "jobs.csv").write_text("\n".join(lines) + "\n")
    return root / "jobs.csv"


def run_batch(jobs: Path, zoo: Path, out: Path, devices: str) -> dict:
    command = [sys.executable, "-m", "sonic", "batch", str(jobs), "--out-dir", str(out), "--models", str(zoo),
               "--devices", devices, "--face-box", "18,20,54,60", "--min-resolution", "64", "--steps", "1",
               "--quiet"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"batch failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    summary = json.loads((out / "batch_report.json").read_text())["summary"]
    return {"devices": devices, "workers": len(devices.split(",")), "jobs": summary["done"],
            "video_seconds": summary["video_seconds"], "wall_seconds": round(wall, 2),
            "video_seconds_per_hour": round(summary["video_seconds"] / wall * 3600, 1),
            "preparations_saved": summary["preparations_saved"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--json", help="write the report here too")
    parser.add_argument("--two-first", action="store_true", help="run 2 workers before 1 (checks load drift)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        jobs = make_inputs(root, args.jobs, args.seconds)
        order = ("cpu,cpu", "cpu") if args.two_first else ("cpu", "cpu,cpu")
        runs = sorted((run_batch(jobs, root / "zoo", root / f"out{n}", devices) for n, devices in enumerate(order)),
                      key=lambda run: run["workers"])
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
              f"{platform.processor() or platform.platform()}", "load_average_1min": round(os.getloadavg()[0], 1),
              "order": "2 workers first" if args.two_first else "1 worker first",
              "settings": "tiny zoo, 64 px, 1 step, RIFE on, x264 medium", "runs": runs,
              "ratio_2_vs_1": round(runs[1]["video_seconds_per_hour"] / runs[0]["video_seconds_per_hour"], 2)}
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
