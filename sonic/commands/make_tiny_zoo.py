"""`python -m sonic make-tiny-zoo DEST`: a tiny random-weight model folder, for trying the tools."""

from __future__ import annotations

HELP = "write a tiny random-weight model folder (for trying the tools)"


def add_arguments(parser) -> None:
    parser.add_argument("dest", help="folder to write (created)")
    from ..weights.locate import LAYOUTS, OFFICIAL_LAYOUT

    parser.add_argument("--layout", default=OFFICIAL_LAYOUT, choices=LAYOUTS, help="folder layout to write")
    parser.add_argument("--svd-single-file", action="store_true",
                        help="put the SVD VAE + CLIP in checkpoints/svd_xt.safetensors (original layout)")


def run(args) -> int:
    from ..tools.zoo import write_tiny_zoo

    path = write_tiny_zoo(args.dest, layout=args.layout, svd_single_file=args.svd_single_file)
    print(f"tiny random-weight models written to {path} (for trying the tools; the videos are noise)")
    return 0
