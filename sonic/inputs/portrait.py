"""Portrait preparation: picture -> model-input tensors (SPEC sections 2.2 and 2.3).

`prepare_portrait` takes any picture `sonic.inputs.image.load_image` reads, finds the face,
optionally crops a square around it (the official `--crop` / gradio behaviour), builds the
rectangular face mask, resizes to the model resolution (short side `min_resolution`, both sides
multiples of 64) and normalises the pixels for the VAE and for CLIP, reproducing the official arithmetic (Python `round`,
floor divisions, PIL LANCZOS) so that the official weights see the same inputs.
"""

from __future__ import annotations

import logging
import math
import numbers
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..config import CLIP_MEAN, CLIP_SIZE, CLIP_STD, DEFAULT_MAX_IMAGE_PIXELS, SIZE_MULTIPLE, check_range
from ..errors import FaceNotFoundError, ImageError, ParameterError
from .face_box import parse_face_box
from .face_detectors import FaceBox, FaceDetector, default_face_detector, select_face
from .image import load_image

logger = logging.getLogger(__name__)

MIN_CROP_SIDE = 16  # px: a smaller face crop is a mistake (a face box of a few pixels)


# --- the official arithmetic (pure functions) -------------------------------------------------

def square_crop_box(face: FaceBox, image_width: int, image_height: int,
                    expand_ratio: float) -> tuple[int, int, int, int]:
    """The official square face crop (SPEC 2.2) as (x1, y1, x2, y2) integer pixels.

    The face box grows by `expand_ratio` of its width/height on every side (clipped to the
    image); the square's side is the short side of that box; its centre starts at the box
    centre and moves toward the face centre along the long axis, by at most half the
    difference of the sides, so the square stays inside. Corners use Python's `round`
    (half to even), so the result can be one pixel off square, exactly as in the reference.
    """
    x1, y1, x2, y2 = face.as_tuple()
    bw, bh = x2 - x1, y2 - y1
    ex1, ey1 = max(x1 - expand_ratio * bw, 0), max(y1 - expand_ratio * bh, 0)
    ex2, ey2 = min(x2 + expand_ratio * bw, image_width), min(y2 + expand_ratio * bh, image_height)
    ew, eh = ex2 - ex1, ey2 - ey1
    side = min(ew, eh)
    cx, cy = (ex1 + ex2) / 2, (ey1 + ey2) / 2
    face_cx, face_cy = (x1 + x2) / 2, (y1 + y2) / 2
    if eh > ew:
        cy += math.copysign(min((eh - ew) / 2, abs(face_cy - cy)), face_cy - cy)
    elif ew > eh:
        cx += math.copysign(min((ew - eh) / 2, abs(face_cx - cx)), face_cx - cx)
    return round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2)


def face_mask_bounds(face: FaceBox, image_width: int, image_height: int,
                     area: float) -> tuple[int, int, int, int]:
    """Face-mask rectangle (x1, y1, x2, y2) in integer pixels (SPEC 2.3 step 2).

    The box is scaled by `area` about its centre; the centre and half sizes use floor
    division on floats and the bounds are truncated with int(), as in the reference.
    """
    x1, y1, x2, y2 = face.as_tuple()
    mask_w, mask_h = (x2 - x1) * area, (y2 - y1) * area
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    mx1, my1 = max(cx - mask_w // 2, 0), max(cy - mask_h // 2, 0)
    mx2, my2 = min(cx + mask_w // 2, image_width), min(cy + mask_h // 2, image_height)
    return int(mx1), int(my1), int(mx2), int(my2)


def model_resolution(width: int, height: int, min_resolution: int) -> tuple[int, int]:
    """(W, H) model input size: short side scaled to `min_resolution`, each side snapped to the
    nearest multiple of 64 with Python's `round` (half to even: 8.5 -> 8), like the reference."""
    scale = min_resolution / min(width, height)
    return (round(width * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE,
            round(height * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE)


def fit_min_resolution(width: int, height: int, min_resolution: int, max_pixels: int) -> int:
    """The largest usable short-side target <= `min_resolution` whose model size has <= `max_pixels`.

    Returns `min_resolution` itself when it fits; otherwise a multiple of 64 (every short
    side the model can get is one). Raises ImageError if even 64 px does not fit (an absurd
    aspect ratio).
    """
    out_w, out_h = model_resolution(width, height, min_resolution)
    if out_w * out_h <= max_pixels:
        return min_resolution
    for candidate in range((min_resolution // SIZE_MULTIPLE) * SIZE_MULTIPLE, 0, -SIZE_MULTIPLE):
        cand_w, cand_h = model_resolution(width, height, candidate)
        if cand_w * cand_h <= max_pixels:
            return candidate
    raise ImageError(f"the picture is {width}x{height} px: even at a 64 px short side the model input would "
                     f"exceed max_pixels={max_pixels}. Crop it to a less extreme aspect ratio")


# --- preparation ------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class PreparedPortrait:
    """Everything the pipeline needs from the portrait (all on the CPU, float32).

    pixels:      (1, 3, H, W) reference image in [-1, 1] (VAE / concat conditioning).
    clip_pixels: (1, 3, 224, 224) CLIP-normalised image (the resized image squashed to 224 px).
    face_mask:   (1, 1, H, W) in [0, 1]: 1 over the enlarged face box, soft LANCZOS edges.
    crop_box:    (x1, y1, x2, y2) integer pixels of `original` that the model sees (for paste-back).
    face_box:    the face used, in `original` pixels.
    original:    the full input picture, uint8 RGB (height, width, 3).
    width, height: model resolution in pixels (multiples of 64).
    min_resolution: the short-side target actually used (lower than asked when max_pixels applied).
    """

    pixels: torch.Tensor
    clip_pixels: torch.Tensor
    face_mask: torch.Tensor
    crop_box: tuple[int, int, int, int]
    face_box: FaceBox
    original: np.ndarray
    width: int
    height: int
    min_resolution: int


def no_face_message(what: str) -> str:
    return (f"no face found in {what}. Ways out: use another picture with a clear, frontal, well-lit face; or give "
            f"the face box yourself with face_box=(x1, y1, x2, y2) in image pixels (CLI --face-box X1,Y1,X2,Y2); "
            f"or animate the whole picture with face_box=\"full\" (CLI --face-box full)")


def _validate_face_box(values: tuple[float, float, float, float], width: int, height: int) -> FaceBox:
    x1, y1, x2, y2 = values
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise ParameterError(f"face_box {values} must lie inside the {width}x{height} picture with x1 < x2 and "
                             f"y1 < y2 (0 <= x1 < x2 <= {width}, 0 <= y1 < y2 <= {height})")
    return FaceBox(x1, y1, x2, y2, 1.0)


def _validate_settings(expand_ratio, min_resolution, face_mask_area, max_pixels) -> None:
    for name, value in (("expand_ratio", expand_ratio), ("min_resolution", min_resolution),
                        ("face_mask_area", face_mask_area)):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ParameterError(f"{name} must be a number, got {value!r}")
        check_range(name, value)
    if not isinstance(min_resolution, int):
        raise ParameterError(f"min_resolution must be a whole number of pixels, got {min_resolution!r}")
    if not (isinstance(max_pixels, int) and max_pixels >= SIZE_MULTIPLE * SIZE_MULTIPLE):
        raise ParameterError(f"max_pixels must be an integer >= 4096, got {max_pixels!r}")


def _redetect_on_crop(detector: FaceDetector, crop: np.ndarray, expected: FaceBox, face_index: int | None,
                      official_face_selection: bool) -> FaceBox:
    """The official pipeline detects the face again on the crop; keep its box when it finds one.

    Default: the largest face of the crop (as the reference). With `face_index`, the crop face
    overlapping the chosen face most. Nothing found on the crop -> the translated box (the
    reference would give up here).
    """
    boxes = detector.detect(crop)
    if boxes and face_index is None:
        return select_face(boxes, official_face_selection=official_face_selection)
    if boxes:
        best = max(boxes, key=lambda b: _iou(b, expected))
        if _iou(best, expected) > 0.3:
            return best
    logger.info("face not re-detected on the crop; using the first detection's box")
    return expected


def _iou(a: FaceBox, b: FaceBox) -> float:
    iw = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    ih = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    union = a.area + b.area - iw * ih
    return iw * ih / union if union > 0 else 0.0


def _to_reference_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> (1,3,H,W) float32 in [-1,1]: torchvision ToTensor then Normalize(0.5, 0.5)."""
    tensor = torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1).float().div(255)
    return tensor.sub(0.5).div(0.5).unsqueeze(0)


def _to_clip_tensor(resized) -> torch.Tensor:
    """PIL image -> (1,3,224,224): LANCZOS squash to 224 px, then CLIPImageProcessor's rescale
    (float64 x 1/255, cast to float32) and normalisation, which are all it does at 224 px."""
    from PIL import Image

    square = np.asarray(resized.resize((CLIP_SIZE, CLIP_SIZE), Image.LANCZOS))
    scaled = (square.astype(np.float64) * (1 / 255)).astype(np.float32)
    normed = (scaled - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(normed.transpose(2, 0, 1))).unsqueeze(0)


def prepare_portrait(image, *, detector: FaceDetector | None = None, face_box=None, face_index: int | None = None,
                     crop: bool = True, expand_ratio: float = 0.5, min_resolution: int = 512,
                     face_mask_area: float = 1.1, max_pixels: int = 1024 * 1024,
                     max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                     official_face_selection: bool = False) -> PreparedPortrait:
    """Portrait -> model inputs, following the official preprocessing (SPEC 2.2-2.3). Pure CPU.

    image:          anything `load_image` accepts.
    detector:       a face detector (`YoloFaceDetector` for official results); default: OpenCV Haar.
    face_box:       None (or "") to detect; (x1, y1, x2, y2) in image pixels (or the text
                    "x1,y1,x2,y2") to skip detection; or "full" to animate the whole picture
                    (no crop, the mask covers everything).
    face_index:     with several faces, the i-th from the left (0 = leftmost); default the largest.
    crop:           cut the official square crop around the face first (expand_ratio margin).
                    False keeps the whole picture, any aspect ratio.
    min_resolution: short side of the model input in pixels (both sides snap to multiples of 64).
    face_mask_area: the face box is enlarged this much (about its centre) for the audio mask.
    max_pixels:     cap on the model input's W*H; a larger result lowers min_resolution with a warning.
    max_image_pixels: cap on the input picture's own W*H (`load_image`); a larger one is refused.
    official_face_selection: reproduce the reference's buggy "largest face" choice.
    """
    _validate_settings(expand_ratio, min_resolution, face_mask_area, max_pixels)
    if face_index is not None:
        if isinstance(face_index, bool) or not isinstance(face_index, numbers.Integral):
            raise ParameterError(f"face_index must be a whole number (0 = leftmost face, 1 = next, ...), "
                                 f"got {face_index!r}; leave it unset to use the largest face")
        face_index = int(face_index)
    face_box = parse_face_box(face_box)
    whole_image = face_box == "full"
    if face_box is not None and face_index is not None:
        raise ParameterError("give either face_box or face_index, not both")
    original = load_image(image, max_image_pixels=max_image_pixels)
    height0, width0 = original.shape[:2]

    if whole_image:
        face = FaceBox(0.0, 0.0, float(width0), float(height0), 1.0)
    elif face_box is not None:
        face = _validate_face_box(face_box, width0, height0)
    else:
        detector = detector or default_face_detector()
        boxes = detector.detect(original)
        if not boxes:
            raise FaceNotFoundError(no_face_message(f"the {width0}x{height0} picture"))
        face = select_face(boxes, face_index, official_face_selection=official_face_selection)

    if crop and not whole_image:
        crop_box = square_crop_box(face, width0, height0, expand_ratio)
        if min(crop_box[2] - crop_box[0], crop_box[3] - crop_box[1]) < MIN_CROP_SIDE:
            raise ParameterError(f"the face {face} gives a crop of only {crop_box[2] - crop_box[0]}x"
                                 f"{crop_box[3] - crop_box[1]} px; give a larger face_box, raise expand_ratio, "
                                 f"or use crop=False")
        work = original[crop_box[1]:crop_box[3], crop_box[0]:crop_box[2]]
        local_face = face.shifted(-crop_box[0], -crop_box[1])
        if face_box is None:
            local_face = _redetect_on_crop(detector, work, local_face, face_index, official_face_selection)
    else:
        crop_box = (0, 0, width0, height0)
        work = original
        local_face = face

    work_h, work_w = work.shape[:2]
    effective_min = fit_min_resolution(work_w, work_h, min_resolution, max_pixels)
    out_w, out_h = model_resolution(work_w, work_h, effective_min)
    if effective_min != min_resolution:
        asked_w, asked_h = model_resolution(work_w, work_h, min_resolution)
        warnings.warn(f"the model input would be {asked_w}x{asked_h} = {asked_w * asked_h} pixels, above "
                      f"max_pixels={max_pixels}; using min_resolution={effective_min} ({out_w}x{out_h}) instead. "
                      f"Raise max_pixels or crop the picture to keep more detail", stacklevel=2)

    mask = np.zeros((work_h, work_w), np.uint8)
    mx1, my1, mx2, my2 = face_mask_bounds(local_face, work_w, work_h, face_mask_area)
    mask[my1:my2, mx1:mx2] = 255

    from PIL import Image

    resized = Image.fromarray(np.ascontiguousarray(work))
    mask_image = Image.fromarray(mask)
    if (out_w, out_h) != (work_w, work_h):
        # LANCZOS on a one-channel mask equals channel 0 of the reference's 3-channel mask.
        resized = resized.resize((out_w, out_h), Image.LANCZOS)
        mask_image = mask_image.resize((out_w, out_h), Image.LANCZOS)

    face_mask = torch.from_numpy(np.asarray(mask_image, dtype=np.float32) / 255.0)[None, None]
    return PreparedPortrait(
        pixels=_to_reference_tensor(np.asarray(resized)),
        clip_pixels=_to_clip_tensor(resized),
        face_mask=face_mask.contiguous(),
        crop_box=tuple(int(v) for v in crop_box),
        face_box=local_face.shifted(crop_box[0], crop_box[1]),
        original=original,
        width=out_w,
        height=out_h,
        min_resolution=effective_min,
    )
