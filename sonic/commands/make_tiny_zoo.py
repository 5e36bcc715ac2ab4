"""`python -m sonic make-tiny-zoo DEST`: a tiny random-weight model folder, for trying the tools."""

from __future__ import annotations

from pathlib import Path

HELP = "write a tiny random-weight model folder (for trying the tools)"


def add_arguments(parser) -> None:
    parser.add_argument("dest", help="folder to write (created)")
    from ..weights.locate import LAYOUTS, OFFICIAL_LAYOUT

    parser.add_argument("--layout", default=OFFICIAL_LAYOUT, choices=LAYOUTS, help="folder layout to write")
    parser.add_argument("--svd-single-file", action="store_true",
                        help="put the SVD VAE + CLIP in checkpoints/svd_xt.safetensors (original layout)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into DEST even if it already holds files (replaces them, real weights included)")


def run(args) -> int:
    from ..errors import OutputError
    from ..tools.zoo import write_tiny_zoo

    dest = Path(args.dest).expanduser()
    if dest.exists() and not dest.is_dir():
        raise OutputError(f"{dest} is a file, not a folder; choose a folder for the tiny zoo")
    # Checked before any work: a models folder holding real weights must not be replaced by noise.
    if dest.is_dir() and any(dest.iterdir()) and not args.overwrite:
        raise OutputError(f"{dest} is not empty (real weights?) and the tiny zoo would replace files in it; "
                          "choose a new or empty folder, or pass --overwrite")
    path = write_tiny_zoo(dest, layout=args.layout, svd_single_file=args.svd_single_file, with_face_detector=True)
    print(f"tiny random-weight models written to {path} (for trying the tools; the videos are noise)")
    return 0
