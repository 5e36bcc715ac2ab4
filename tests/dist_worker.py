"""A torch.distributed worker for the multi-process tests (run by torchrun or spawned by them).

    torchrun --nproc-per-node 2 tests/dist_worker.py OUT_DIR [--fault raise|kill|hang|interrupt --fault-rank R]

Runs the sampler with the stand-in UNet of test_sampler.py over clips of 1, 2, 3 and 5 windows
(and one of 7 frames), with whole-window and (window, branch) units, on a `DistributedExecutor`;
rank 0 also runs the serial executor in the same process and saves both to OUT_DIR/latents.pt.
Every rank writes `rank<R>.txt`: "ok" or the one-line error that stopped it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

FRAME_COUNTS = (25, 50, 75, 125, 7)  # 1, 2, 3, 5 windows of 25 frames; 7: one window holding frames thrice


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--fault", choices=["raise", "kill", "hang", "interrupt"])
    parser.add_argument("--fault-rank", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--frames", default=",".join(map(str, FRAME_COUNTS)), help="clip lengths, comma-separated")
    args = parser.parse_args()
    # Ctrl-C semantics even when the suite was started as a background job, whose children inherit
    # an ignored SIGINT (Python then installs no KeyboardInterrupt handler).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    torch.set_num_threads(1)
    out = Path(args.out)
    from sonic.diffusion.distributed import DistributedExecutor, init_process_group

    init_process_group(backend="gloo")
    executor = DistributedExecutor()
    rank = executor.rank
    try:
        results = run_all(executor, args)
    except BaseException as exc:  # noqa: BLE001 - the test reads what stopped each rank
        (out / f"rank{rank}.txt").write_text(f"{type(exc).__name__}: {exc}")
        return 130 if type(exc).__name__ in ("Interrupted", "KeyboardInterrupt") else 1
    if rank == 0:
        torch.save(results, out / "latents.pt")
    (out / f"rank{rank}.txt").write_text("ok")
    executor.close()
    return 0


def run_all(executor, args) -> dict:
    from test_sampler import CFG, StandInUNet, make_inputs

    from sonic.diffusion.executors import SerialExecutor
    from sonic.diffusion.sampler import sample_latents
    from sonic.diffusion.schedule import make_schedule

    unet = StandInUNet()
    rank = executor.rank
    calls = [0]

    def faulty_unet(*inputs, **options):
        calls[0] += 1
        if args.fault and rank == args.fault_rank:
            (Path(args.out) / f"started{rank}").touch()
            if args.fault == "raise" and calls[0] == 2:
                raise RuntimeError("the UNet broke on purpose")
            if args.fault == "kill" and calls[0] == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            if args.fault == "hang" and calls[0] == 2:
                time.sleep(3600)
            if args.fault == "interrupt":
                time.sleep(0.2)  # slow enough for the test's SIGINT to land here
        return unet(*inputs, **options)

    results = {}
    for num_frames in map(int, args.frames.split(",")):
        inputs = make_inputs(num_frames)
        for split in (False, True):
            run = dict(schedule=make_schedule(None, args.steps, 1.0), config=CFG, split_branches=split, **inputs)
            results[(num_frames, split, "distributed")] = sample_latents(faulty_unet, executor=executor, **run)
            if rank == 0:
                results[(num_frames, split, "serial")] = sample_latents(unet, executor=SerialExecutor(), **run)
        if args.fault:
            break
    executor.raise_if_cancelled()  # a cancel held during the last exchange
    return results


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The result is written: skip the interpreter's teardown, where gloo's threads occasionally abort
    # (SIGABRT) an interrupted rank after it has already reported and chosen its exit status.
    os._exit(code)
