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

# ---- Several GPUs for one clip (issue 14). Needs >= 2 GPUs; G = number of GPUs.
# Exactness on the GPU: threads over two devices (or one GPU listed twice) give the serial frames.
bench multi_serial_10s   --resolution 512 --audio-seconds 10 --steps 25 --repeats 2
bench multi_threads_10s  --resolution 512 --audio-seconds 10 --steps 25 --repeats 2 --devices all \
      --baseline "$out/multi_serial_10s.json"
bench multi_threads_60s  --resolution 512 --audio-seconds 60 --steps 25 --repeats 1 --devices all
# torchrun: one process per GPU (NCCL); rank 0 writes the JSON and prints the spread line.
G="$(nvidia-smi -L | wc -l)"
echo "== multi_torchrun_10s on $G GPUs"
torchrun --standalone --nproc-per-node "$G" -m sonic bench --resolution 512 --audio-seconds 10 --steps 25 \
      --repeats 2 --baseline "$out/multi_serial_10s.json" --json "$out/multi_torchrun_10s.json"
# One UNet call with 3 branches (batch 75) against 1 branch (batch 25): decides when branch units pay.
python - "$out" <<'PY'
import json, pathlib, sys, time
import torch
from sonic.tools.random_models import build_random_models
models = build_random_models(device=torch.device("cuda"), dtype=torch.bfloat16, seed=0, interpolation=False)
unet, h = models.unet, 64
def call(batch):
    args = (torch.randn(batch, 25, 8, h, h, device="cuda", dtype=torch.bfloat16), torch.tensor(1.0, device="cuda"),
            torch.randn(batch * 25, 1, 1024, device="cuda", dtype=torch.bfloat16),
            torch.randn(batch * 25, 32, 1024, device="cuda", dtype=torch.bfloat16),
            torch.tensor([[12.5, 20.0, 20.0]] * batch, device="cuda", dtype=torch.bfloat16), None)
    with torch.no_grad():
        for _ in range(2):
            unet(*args)
        torch.cuda.synchronize(); t = time.perf_counter()
        for _ in range(5):
            unet(*args)
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / 5
three, one = call(3), call(1)
result = {"batch75_seconds": three, "batch25_seconds": one, "branch_cost_ratio": one / three}
print(result)
pathlib.Path(sys.argv[1], "branch_units.json").write_text(json.dumps(result, indent=2))
PY
# Threads on one GPU (the device listed twice) and over every GPU give the serial latents bit for bit.
python - <<'PY'
import torch
from sonic.diffusion.executors import SerialExecutor, ThreadExecutor
from sonic.diffusion.sampler import sample_latents
from sonic.diffusion.schedule import make_schedule
from sonic.tools.random_models import build_random_models
models = build_random_models(device=torch.device("cuda"), dtype=torch.bfloat16, seed=0, interpolation=False)
g = torch.Generator().manual_seed(0)
n, h = 60, 64  # 3 windows at 512 px
inputs = dict(ref_latent=torch.randn(1, 4, h, h, generator=g), image_latent=torch.randn(1, 4, h, h, generator=g),
              clip_embeds=torch.randn(1, 1024, generator=g), audio_tokens=torch.randn(n, 32, 1024, generator=g),
              null_tokens=torch.randn(32, 1024, generator=g), buckets=16 + 8 * torch.rand(n, 2, generator=g),
              face_mask=torch.ones(1, 1, 8 * h, 8 * h), noise=torch.randn(1, n, 4, h, h, generator=g))
inputs = {k: v.cuda() for k, v in inputs.items()}
from sonic.config import SonicConfig
run = lambda ex, split=None: sample_latents(models.unet, schedule=make_schedule(None, 3, 1.0), config=SonicConfig(),
                                           executor=ex, dtype=torch.bfloat16, split_branches=split, **inputs)
serial = run(SerialExecutor("cuda:0"))
print("threads cuda:0,cuda:0 equal:", torch.equal(serial, run(ThreadExecutor(["cuda:0", "cuda:0"]))))
if torch.cuda.device_count() > 1:
    print("threads over all GPUs equal:", torch.equal(serial, run(ThreadExecutor([f"cuda:{i}" for i in range(torch.cuda.device_count())]))))
PY
