#!/usr/bin/env bash
# One clip on 2 processes (issue 14), CPU version: 2 gloo ranks x 1 thread against 1 process x 1
# thread, tiny zoo, 8 s of audio = 100 latent frames = 4 windows per step. Run from the repository
# root:  bash benchmarks/multidevice_cpu.sh [OUT_DIR]
set -euo pipefail
out="${1:-benchmarks/results/multidevice_cpu}"
mkdir -p "$out"
common=(--device cpu --size tiny --threads 1 --resolution 128 --audio-seconds 8 --steps 4 --repeats 3)
OMP_NUM_THREADS=1 python -m sonic bench "${common[@]}" --json "$out/one_process.json"
OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone --nproc-per-node 2 -m sonic bench "${common[@]}" \
    --baseline "$out/one_process.json" --json "$out/two_ranks.json"
