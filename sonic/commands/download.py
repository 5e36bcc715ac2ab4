"""`python -m sonic download`: fetch the weights Sonic needs, then check them with `doctor`."""

from __future__ import annotations

import sys

from ..weights.locate import LAYOUTS, SOURCES, default_models_dir

HELP = "download the weights Sonic needs (resumable; HF_ENDPOINT mirrors)"
DESCRIPTION = ("Download exactly the weight files Sonic needs from Hugging Face (HF_ENDPOINT selects a mirror; "
               "HF_TOKEN or `hf auth login` for the gated SVD-xt repository). Interrupted downloads resume.")
EXIT_INTERRUPTED = 130


def add_arguments(parser) -> None:
    parser.add_argument("--models", help=f"weights folder (default: $SONIC_MODELS or {default_models_dir()}); for "
                                          "ComfyUI give ComfyUI/models with --layout comfyui")
    parser.add_argument("--layout", choices=LAYOUTS,
                        help="official checkpoints/ layout or ComfyUI's models/sonic (default: what the folder "
                             "already is, official for a new one)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SOURCES)} (default: all)")
    parser.add_argument("--no-doctor", action="store_true", help="skip the check that loads every file afterwards")


def run(args) -> int:
    from ..weights.download import download_weights
    from ..weights.loading import doctor_report

    try:
        models_dir = download_weights(args.models, layout=args.layout, only=args.only,
                                      log=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume the download", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.no_doctor:
        return 0
    print(f"checking {models_dir} (python -m sonic doctor):", flush=True)
    ok, lines = doctor_report(models_dir)
    for line in lines:
        print(line)
    # With --only a partial folder is expected: the doctor's verdict then only informs.
    return 0 if ok or args.only else 1
