#!/usr/bin/env bash
# The standard GPU measurement set for BENCHMARKS.md. Run from the repository root on a CUDA
# machine:  bash benchmarks/run_gpu.sh [OUT_DIR]   (default benchmarks/results/<date>)
# Each line writes one JSON report; the table of each run is printed as it finishes.
set -euo pipefail
out="${1:-benchmarks/results/$(date -u +%Y-%m-%d)}"
mkdir -p "$out"
bench() { name="$1"; shift; echo "== $name: python -m sonic bench $*"; python -m sonic bench --device cuda "$@" --json "$out/$name.json"; }

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,memory.used --format=csv > "$out/gpu.csv" || true
python -m sonic bench --flops-only --resolution 512 --json "$out/flops_512.json"
bench h512_keep        --resolution 512 --audio-seconds 10 --steps 25 --repeats 3
bench h512_compile     --resolution 512 --audio-seconds 10 --steps 25 --repeats 3 --compile
bench h512_math_attn   --resolution 512 --audio-seconds 10 --steps 25 --repeats 3 --attention math
bench h512_lowvram     --resolution 512 --audio-seconds 10 --steps 25 --repeats 3 --memory-policy lowvram
bench h512_offload     --resolution 512 --audio-seconds 10 --steps 25 --repeats 3 --memory-policy offload
# Peak device memory must not depend on audio length (10 s vs 120 s within 5%): fewer steps, same shapes.
bench mem_10s          --resolution 512 --audio-seconds 10  --steps 2 --repeats 1
bench mem_120s         --resolution 512 --audio-seconds 120 --steps 2 --repeats 1
bench h768_keep        --resolution 768 --audio-seconds 10 --steps 25 --repeats 3
bench h1024_keep       --resolution 1024 --audio-seconds 10 --steps 25 --repeats 3
python - "$out" <<'PY'
import json, pathlib, sys
rows = []
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    r = json.loads(path.read_text())
    if "stages" not in r:
        continue
    fmt = lambda v, s=".3f": "n/a" if v is None else format(v, s)
    rows.append(f"{path.stem:<16} s/video-s {fmt(r['seconds_per_video_second'])}  s/step {fmt(r['seconds_per_step'])}  "
                f"MFU {fmt(r['mfu'] and 100 * r['mfu'], '.1f')}%  outside UNet {fmt(100 * r['outside_unet_share'], '.1f')}%  "
                f"peak dev {fmt(r['peak_device_memory_gb'], '.2f')} GB  host {fmt(r['peak_host_memory_gb'], '.2f')} GB  "
                f"placement {r['placement_ok']}")
print("\n".join(rows))
PY
