"""`python -m sonic convert`: verified .safetensors twins of the .pth/.pkl weights."""

from __future__ import annotations

HELP = "rewrite .pth/.pkl weights as .safetensors twins (verified)"


def add_arguments(parser) -> None:
    parser.add_argument("--models", required=True, help="weights folder (official checkpoints/ or ComfyUI models/)")
    parser.add_argument("--trust-pickles", action="store_true",
                        help="also convert pickles that need Python classes (runs their code: only in a sandbox, "
                             "only for files you trust)")


def run(args) -> int:
    from ..weights import convert_checkpoints

    written = convert_checkpoints(args.models, trust_pickles=args.trust_pickles)
    for path in written:
        print(f"ok {path}")
    if not written:
        print("nothing to convert: no .pth/.pkl/.bin weights without a verified .safetensors twin")
    return 0
