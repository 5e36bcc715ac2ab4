"""`python -m sonic bench`: speed and memory of the pipeline (see BENCHMARKS.md)."""

from __future__ import annotations

import sys

HELP = "speed and memory benchmark (see BENCHMARKS.md)"
DESCRIPTION = "Speed and memory benchmark of the whole pipeline, stage by stage (random weights or a real folder)."

from ..placement import MEMORY_POLICIES
from ..tools.bench_settings import ATTENTION_BACKENDS, SIZES, WARMUP_STEPS


def add_arguments(parser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    parser.add_argument("--json", dest="json_path", metavar="OUT.json", help="write the full report here")
    parser.add_argument("--size", default="auto", choices=SIZES,
                        help="full-size random models or the tiny zoo (auto: full on CUDA, tiny elsewhere)")
    parser.add_argument("--models", metavar="DIR", help="real weights folder (official or ComfyUI layout) instead")
    parser.add_argument("--resolution", type=int, help="model input side in pixels (full: 512, 768, 1024; default 512, tiny 64)")
    parser.add_argument("--audio-seconds", type=float, help="seconds of synthetic speech (default 10, tiny 2)")
    parser.add_argument("--steps", type=int, help="denoising steps (default 25, tiny 2)")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPUs that have it), fp32, bf16, fp16")
    parser.add_argument("--attention", default="auto", choices=ATTENTION_BACKENDS, help="SDPA backend for the UNet")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (compilation is in the warm-up)")
    parser.add_argument("--compile-mode", help="torch.compile mode, e.g. max-autotune")
    parser.add_argument("--memory-policy", default="keep", choices=MEMORY_POLICIES)
    parser.add_argument("--repeats", type=int, help="measured runs, medians reported (default 3, tiny 2)")
    parser.add_argument("--warmup", type=int, default=1, help=f"excluded warm-up runs of {WARMUP_STEPS} steps (default 1)")
    parser.add_argument("--decode-chunk-size", type=int, help="frames per VAE decode call (default 8, the official value)")
    parser.add_argument("--no-interpolate", dest="interpolate", action="store_false", help="skip RIFE (12.5 fps)")
    parser.add_argument("--x264-preset", default="medium", help="x264 preset of the MP4 writer (default medium)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU when the GPU is not in the table")
    parser.add_argument("--keep-video", metavar="OUT.mp4", help="keep the last measured video")
    parser.add_argument("--flops-only", action="store_true",
                        help="only count the full-size UNet FLOPs per call at --resolution (meta device, no GPU)")


def run(args) -> int:
    from ..tools.bench import BenchSettings, format_table, run_benchmark

    options = {k: v for k, v in vars(args).items() if k not in ("run", "debug", "command")}
    settings = BenchSettings(command="python -m sonic bench " + " ".join(sys.argv[2:]), **options).validate()
    report = run_benchmark(settings, log=lambda msg: print(msg, file=sys.stderr))
    if settings.flops_only:
        return 0
    print(format_table(report))
    if settings.json_path:
        print(f"report written to {settings.json_path}")
    return 0
