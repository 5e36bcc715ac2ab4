"""`python -m sonic doctor`: check a weights folder and say what is missing or wrong, and where to get it."""

from __future__ import annotations

HELP = "check a weights folder and say what is missing or wrong"


def add_arguments(parser) -> None:
    parser.add_argument("--models", help="weights folder (official checkpoints/ or ComfyUI models/); default: "
                                         "as for generate")
    parser.add_argument("--svd-checkpoint", help="SVD-xt single file instead of the diffusers folder")


def run(args) -> int:
    from ..weights.loading import doctor_report
    from ..weights.locate import default_models_dir

    ok, lines = doctor_report(args.models or default_models_dir(), svd_checkpoint=args.svd_checkpoint)
    for line in lines:
        print(line)
    return 0 if ok else 1
