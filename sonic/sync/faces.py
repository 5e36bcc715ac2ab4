"""Where the mouth is: consistent Haar face boxes over a few sampled frames, and boxes derived from them."""

from __future__ import annotations

import math

import numpy as np

from ..errors import FaceNotFoundError, ParameterError, SonicError

FACE_MIN_PIXELS = 24  # px (analysed frame, before upscaling): a smaller face has no measurable mouth
FACE_SAMPLES = 12  # frames sampled evenly for face detection
FACE_MIN_FRAME_SHARE = 0.4  # a face must be found in this share of them: a stray box is not; a face that
#                             Haar misses while the mouth is wide open still is


def detect_face_box(grey: np.ndarray, *, samples: int = FACE_SAMPLES) -> tuple[int, int, int, int]:
    """The face box `(x1, y1, x2, y2)` Haar finds most consistently (see `detect_face_boxes`)."""
    return detect_face_boxes(grey, samples=samples)[0]


def detect_face_boxes(grey: np.ndarray, *, samples: int = FACE_SAMPLES,
                      limit: int = 3) -> list[tuple[int, int, int, int]]:
    """Median boxes `(x1, y1, x2, y2)` of the faces Haar finds consistently on a few frames,
    best first (at most `limit`; FaceNotFoundError when there is none).

    Haar misses faces on some frames and fires on stray patterns on others (noise, textures),
    so boxes from evenly spaced frames are grouped by overlap, and a group counts as the face
    only when it is found in enough of the sampled frames (FACE_MIN_FRAME_SHARE) and is at least
    FACE_MIN_PIXELS tall in real pixels (a smaller "face" has no measurable mouth). Small
    frames are upscaled to 360 px and contrast-equalised first (both help Haar a lot). Haar runs
    strict and loose; the consistent places are ranked by how often strict boxes confirm them.
    """
    import cv2

    from ..errors import WeightsError
    from ..inputs.face_detectors import haar_cascade

    try:
        detector = haar_cascade()
    except WeightsError:
        raise SonicError("OpenCV's Haar face cascade is missing (opencv 5 wheels ship none); "
                         "install opencv-python<5 or pass a mouth box") from None
    height, width = grey.shape[1:3]
    upscale = max(1.0, 360 / height)
    size = (round(width * upscale), round(height * upscale))
    picks = np.linspace(0, grey.shape[0] - 1, min(samples, grey.shape[0])).round().astype(int)
    images = []
    for index in picks:
        frame = np.clip(grey[index], 0, 255).astype(np.uint8)
        if upscale > 1:
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)
        images.append(cv2.equalizeHist(frame))
    min_side = int(math.ceil(max(FACE_MIN_PIXELS * upscale, size[1] / 12)))
    needed = max(1, math.ceil(FACE_MIN_FRAME_SHARE * len(images)))

    def detect(neighbours: int) -> list[list[tuple]]:
        return [[(x, y, x + w, y + h, neighbours) for x, y, w, h in
                 detector.detectMultiScale(image, scaleFactor=1.1, minNeighbors=neighbours,
                                           minSize=(min_side, min_side))] for image in images]

    # Strict (5 neighbours) boxes are rarely false but miss the face on some frames; loose (3)
    # ones find it more often but also fire on textures. A place counts when it is seen (either
    # way) in enough frames; they are ranked by how often the strict pass confirms them.
    per_frame = [strict + loose for strict, loose in zip(detect(5), detect(3))]
    groups = _groups_across_frames(per_frame)
    consistent = [g for g in groups if len(g) >= needed]
    if consistent:
        consistent.sort(key=lambda g: (sum(box[4] == 5 for box in g), len(g), _area(g[0])), reverse=True)
        return [tuple(int(round(v / upscale)) for v in np.median(np.array(g)[:, :4], axis=0))
                for g in consistent[:limit]]
    best_count = max((len(g) for g in groups), default=0)
    found = f"a face-like pattern in only {best_count} of {len(images)} sampled frames" if best_count \
        else f"nothing in {len(images)} sampled frames"
    raise FaceNotFoundError(f"no face found in the video (OpenCV Haar detector, frontal faces at least "
                            f"{FACE_MIN_PIXELS} px tall in {needed} or more of {len(images)} sampled frames; "
                            f"{found}); pass the mouth region with --mouth-box x1,y1,x2,y2")


def _groups_across_frames(per_frame: list[list[tuple]]) -> list[list[tuple]]:
    """Boxes `(x1, y1, x2, y2, ...)` grouped by place and size across frames, at most one box per
    frame in a group (a frame's strict box preferred, then its larger ones)."""
    groups: list[list] = []
    for boxes in per_frame:
        claimed: set[int] = set()
        for box in sorted(boxes, key=lambda b: (-b[4], -_area(b))):
            index = next((i for i, g in enumerate(groups) if _iou(g[0], box) > 0.4), None)
            if index is None:
                groups.append([box])
                claimed.add(len(groups) - 1)
            elif index not in claimed:  # else: this frame's second box of the same place (strict + loose)
                groups[index].append(box)
                claimed.add(index)
    return groups


def _area(box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def _iou(a, b) -> float:
    inter_w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def mouth_box_from_face(face, width: int, height: int) -> tuple[int, int, int, int]:
    """Lower middle of a face box: the mouth sits at 60-110 % of a Haar box's height."""
    x1, y1, x2, y2 = face
    w, h = x2 - x1, y2 - y1
    box = (x1 + 0.2 * w, y1 + 0.6 * h, x2 - 0.2 * w, y1 + 1.1 * h)
    return _clip_box(box, width, height)


def _face_box_around_mouth(mouth, width: int, height: int) -> tuple[int, int, int, int]:
    """A face-sized box around a given mouth box (inverse of `mouth_box_from_face`)."""
    x1, y1, x2, y2 = mouth
    w = (x2 - x1) / 0.6
    h = (y2 - y1) / 0.5
    top = y1 - 0.6 * h
    return _clip_box((x1 - 0.2 * w, top, x2 + 0.2 * w, top + h), width, height)


def _clip_box(box, width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, y1 = max(0, x1), max(0, y1)
    x2, y2 = min(width, x2), min(height, y2)
    if x2 - x1 < 2 or y2 - y1 < 2:
        raise ParameterError(f"the mouth box {box} is empty inside a {width}x{height} frame")
    return x1, y1, x2, y2


def _scaled_box(box, scale: float, width: int, height: int) -> tuple[int, int, int, int]:
    try:
        values = [float(v) for v in box]
    except (TypeError, ValueError):
        raise ParameterError(f"mouth_box must be four numbers x1, y1, x2, y2 in pixels, got {box!r}") from None
    if len(values) != 4 or values[2] <= values[0] or values[3] <= values[1]:
        raise ParameterError(f"mouth_box must be x1, y1, x2, y2 with x2 > x1 and y2 > y1, got {box!r}")
    return _clip_box([v * scale for v in values], width, height)
