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
                        help="replace files that already exist in DEST (real weights included!)")


def run(args) -> int:
    path = write_zoo_safely(Path(args.dest).expanduser(), layout=args.layout, svd_single_file=args.svd_single_file,
                            overwrite=args.overwrite)
    print(f"tiny random-weight models written to {path} (for trying the tools; the videos are noise)")
    return 0


def write_zoo_safely(dest: Path, *, layout: str, svd_single_file: bool, overwrite: bool) -> Path:
    """Build the zoo in a scratch folder inside `dest`, then publish file by file; refuse (before
    publishing anything) when a file would replace one already there, unless `overwrite`."""
    from ..errors import OutputError
    from ..files import Scratch, publish
    from ..tools.zoo import write_tiny_zoo

    if dest.exists() and not dest.is_dir():
        raise OutputError(f"{str(dest)!r} is a file, not a folder; choose a folder for the tiny zoo")
    dest.mkdir(parents=True, exist_ok=True)
    with Scratch(dest) as scratch:
        built = write_tiny_zoo(scratch.path("zoo"), layout=layout, svd_single_file=svd_single_file)
        root = scratch.path("zoo")
        files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
        taken = [str(name) for name in files if (dest / name).exists()]
        if taken and not overwrite:
            raise OutputError(f"{str(dest)!r} already holds {', '.join(taken[:3])}" + (" ..." if len(taken) > 3 else "")
                              + "; the tiny zoo would replace them (real weights?): choose an empty folder, or "
                                "pass --overwrite")
        for name in files:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            publish(root / name, dest / name, overwrite=overwrite)
        return dest / built.relative_to(root)
