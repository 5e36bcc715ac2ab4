"""The one parser of a user-given face box (CLI flag, text widget, API argument). Light: no torch."""

from __future__ import annotations

import math

from ..errors import ParameterError

FORMS = "four numbers x1,y1,x2,y2 in image pixels, \"full\" (whole picture) or empty (detect the face)"


def parse_face_box(face_box):
    """User forms of a face box -> None (detect), "full", or (x1, y1, x2, y2) floats.

    Accepts None, "" or "auto" (detect), "full", "x1,y1,x2,y2" (commas or semicolons, spaces
    ignored), a 4-sequence of numbers, or anything with `as_tuple()` (a detected `FaceBox`).
    Checks what needs no picture: four finite numbers, not negative, x1 < x2 and y1 < y2. Whether
    the box lies inside the picture is checked where the picture is known.
    """
    if face_box is None:
        return None
    if hasattr(face_box, "as_tuple"):
        return tuple(float(v) for v in face_box.as_tuple())[:4]
    parts = face_box
    if isinstance(face_box, str):
        text = face_box.strip().lower()
        if text in ("", "auto"):
            return None
        if text == "full":
            return "full"
        parts = text.replace(";", ",").replace(" ", "").split(",")
    try:
        values = tuple(float(v) for v in parts)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ParameterError(f"face_box must be {FORMS}, got {face_box!r}")
    x1, y1, x2, y2 = values
    if min(values) < 0 or x2 <= x1 or y2 <= y1:
        raise ParameterError(f"face_box {face_box!r} is empty or negative: need 0 <= x1 < x2 and 0 <= y1 < y2 "
                             f"(x1,y1 = top-left corner, x2,y2 = bottom-right, in image pixels)")
    return values
