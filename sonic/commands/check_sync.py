"""`python -m sonic check-sync VIDEO`: measure the lip-sync offset of any talking-head video.

Prints one JSON object. Exit status: 0 measured; 2 bad arguments or an unusable video (no audio,
no face, unreadable); 3 with `--require-sync` when the video is not in sync.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import AudioError, ParameterError
from ..sync.measure import IN_SYNC_MAX_MS, IN_SYNC_MIN_CONFIDENCE

HELP = "lip-sync offset of any talking-head video (JSON)"
DESCRIPTION = ("Measure the lip-sync offset of a talking-head video (audio loudness changes vs "
                    "mouth motion). Prints JSON: offset_ms (positive = the mouth moves after the "
                    "sound), confidence (z-score; >= 3 means the mouth follows this audio), "
                    "drift_ms_per_min, silence_mouth_activity.")
EXIT_NOT_IN_SYNC = 3


def add_arguments(parser) -> None:
    parser.add_argument("video", help="video file with an audio track (mp4, mov, mkv, ...)")
    parser.add_argument("--mouth-box", metavar="X1,Y1,X2,Y2",
                        help="mouth region in video pixels (default: lower middle of the detected face)")
    parser.add_argument("--max-seconds", type=float, default=None, help="analyse only the start of the video")
    parser.add_argument("--curves", action="store_true", help="also print the correlation-vs-lag curve")
    parser.add_argument("--plot", metavar="PNG", help="also draw the correlation-vs-lag curve into this PNG")
    parser.add_argument("--require-sync", action="store_true",
                        help=f"exit with status 3 unless |offset| <= {IN_SYNC_MAX_MS:g} ms and "
                             f"confidence >= {IN_SYNC_MIN_CONFIDENCE:g}")


def run(args) -> int:
    from ..media.probe import probe, read_video
    from ..sync.measure import (
        ANALYSIS_HEIGHT,
        check_plot_path,
        measure_sync,
        plot_lag_curves,
    )

    mouth_box = None
    if args.mouth_box:
        try:
            mouth_box = [float(v) for v in args.mouth_box.split(",")]
        except ValueError:
            raise ParameterError(f"--mouth-box must be four numbers X1,Y1,X2,Y2, got {args.mouth_box!r}") from None
        if len(mouth_box) != 4:
            raise ParameterError(f"--mouth-box must be four numbers X1,Y1,X2,Y2, got {args.mouth_box!r}")
    max_seconds = args.max_seconds
    if max_seconds is not None and not (math.isfinite(max_seconds) and max_seconds > 0):
        raise ParameterError(f"--max-seconds must be a number of seconds above 0, got {max_seconds:g}; "
                             "leave it out to analyse the whole video")
    if args.plot:
        check_plot_path(args.plot)
    frames, fps, audio, rate = read_video(args.video, max_height=ANALYSIS_HEIGHT, audio_sample_rate=16_000,
                                          mono=True, max_seconds=max_seconds)
    if audio is None:
        raise AudioError(f"{args.video!r} has no audio track; lip-sync needs the soundtrack")
    # read_video may have scaled the frames down: boxes go in and out in the file's pixels
    factor = frames.shape[1] / probe(args.video)["height"]
    if mouth_box is not None:
        mouth_box = [v * factor for v in mouth_box]
    report = measure_sync(frames, fps, audio, rate, mouth_box=mouth_box)
    if args.plot:
        plot_lag_curves({Path(args.video).name: report}, args.plot)
    data = {"file": args.video, **report.to_dict(curves=args.curves)}
    data["mouth_box"] = [int(round(v / factor)) for v in report.mouth_box]
    print(json.dumps(data))
    return EXIT_NOT_IN_SYNC if args.require_sync and not report.in_sync else 0
