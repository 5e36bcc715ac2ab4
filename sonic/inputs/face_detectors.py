"""Face detectors and face selection (SPEC section 2.1).

Two detectors share one tiny protocol, `detect(rgb) -> list[FaceBox]` (boxes in the pixels of
the image given, best score first):

* `YoloFaceDetector` runs the release's `yoloface_v5m.pt` weights in our own YOLOv5-face
  network (`sonic.models.yoloface`; the archive's TorchScript program is never run, only its
  tensors are read) and reproduces the official call convention and post-processing exactly
  (so crops and masks match the official ones).
* `HaarFaceDetector` is the offline fallback that needs no download: OpenCV's frontal-face
  Haar cascade (shipped by opencv-python 4.x wheels). It finds clear frontal faces; its boxes
  are placed differently from YOLO's, so results differ slightly from the official ones.

`select_face` picks one face among several: the truly largest by default, the i-th from the
left with `face_index`, or the official (buggy) choice with `official_face_selection=True`.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch

from ..config import YOLO_CONF_THRESHOLD, YOLO_IOU_THRESHOLD, YOLO_SHORT_SIDE, YOLO_STRIDE_MULTIPLE
from ..errors import ParameterError, WeightsError

logger = logging.getLogger(__name__)

YOLO_STRIDES = (8, 16, 32)  # detection-head strides of YOLOv5 (pixels per grid cell)
HAAR_CASCADE_FILE = "haarcascade_frontalface_default.xml"


@dataclass(frozen=True)
class FaceBox:
    """One face: corners in image pixels (floats, x to the right, y down) and a detector score."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float = 1.0

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        return (self.x1 + self.x2) / 2, (self.y1 + self.y2) / 2

    def shifted(self, dx: float, dy: float) -> "FaceBox":
        """The same box in a coordinate system whose origin is (-dx, -dy) of this one."""
        return FaceBox(self.x1 + dx, self.y1 + dy, self.x2 + dx, self.y2 + dy, self.score)

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    def __str__(self) -> str:
        return f"({self.x1:.0f}, {self.y1:.0f}, {self.x2:.0f}, {self.y2:.0f})"


class FaceDetector(Protocol):
    """Anything with `detect(rgb uint8 HxWx3) -> list[FaceBox]`, best score first."""

    def detect(self, rgb: np.ndarray) -> list[FaceBox]: ...


# --- YOLOv5-face (the official detector) ----------------------------------------------------

def yolo_input_size(height: int, width: int) -> tuple[int, int]:
    """(h1, w1) the YOLO detector sees for an image of height x width pixels.

    The short side is scaled to 416 and each side is then rounded *up* to a multiple of 32
    independently (no letterbox), exactly like the official caller.
    """
    ratio = YOLO_SHORT_SIDE / min(height, width)
    snap = YOLO_STRIDE_MULTIPLE
    return ((int(height * ratio) + snap - 1) // snap) * snap, ((int(width * ratio) + snap - 1) // snap) * snap


def make_yolo_grids(h1: int, w1: int) -> list[torch.Tensor]:
    """Cell-index grids for strides 8/16/32: each (1, 1, ny, nx, 2) float32, last dim (x_index, y_index)."""
    grids = []
    for stride in YOLO_STRIDES:
        ny, nx = h1 // stride, w1 // stride
        yv, xv = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
        grids.append(torch.stack((xv, yv), dim=2).view(1, 1, ny, nx, 2).float())
    return grids


def box_iou_matrix(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """IoU of every xyxy box in `boxes_a` (N,4) with every one in `boxes_b` (M,4): (N,M)."""
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]).clamp(min=0) * (boxes_a[:, 3] - boxes_a[:, 1]).clamp(min=0)
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]).clamp(min=0) * (boxes_b[:, 3] - boxes_b[:, 1]).clamp(min=0)
    top_left = torch.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = torch.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(inter))


def non_max_suppression(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS like `torchvision.ops.nms`: indices of the kept boxes, highest score first.

    A box is dropped when its IoU with an already kept, higher-scoring box is > `iou_threshold`.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    if order.numel() == 0:
        return order
    iou = box_iou_matrix(boxes[order], boxes[order])
    suppressed = torch.zeros(order.numel(), dtype=torch.bool)
    keep = []
    for i in range(order.numel()):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


class YoloFaceDetector:
    """The official face detector: a YOLOv5m-face network called as `model(img, grids)`.

    `model` is our `YoloFace` with the release tensors (see `from_file`) or any module with the
    same call convention: `img` float32 (1,3,h1,w1) RGB in [0,1], `grids` the three cell-index grids of
    `make_yolo_grids`, result (1, K, 16) with columns [cx, cy, w, h, obj_conf, 10 landmark
    coordinates, cls_conf] in input pixels. Post-processing follows the official YOLOv5-face
    NMS: obj_conf > 0.5, then obj_conf*cls_conf > 0.5, cxcywh -> xyxy, NMS at IoU 0.45.
    """

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu",
                 conf_threshold: float = YOLO_CONF_THRESHOLD, iou_threshold: float = YOLO_IOU_THRESHOLD) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.conf_threshold = conf_threshold
        self.iou_threshold = iou_threshold
        self._grids: dict[tuple[int, int], list[torch.Tensor]] = {}

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "YoloFaceDetector":
        """Load `yoloface_v5m.pt` into our own YOLOv5-face network; nothing in the file runs.

        The TorchScript archive's program is never loaded: only its tensors are read (see
        `sonic.weights.torchscript`) and loaded strictly into `sonic.models.yoloface.YoloFace`.
        """
        return cls(load_yoloface_network(path), device)

    def grids_for(self, h1: int, w1: int) -> list[torch.Tensor]:
        """Cell-index grids for an (h1, w1) input, built once per size and kept on the device."""
        key = (h1, w1)
        if key not in self._grids:
            self._grids[key] = [g.to(self.device) for g in make_yolo_grids(h1, w1)]
        return self._grids[key]

    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """uint8 HxWx3 RGB -> float32 (1,3,h1,w1) RGB in [0,1] at the detector's input size.

        The official caller resizes a BGR array and then swaps to RGB; the per-channel linear
        resize commutes with the swap, so resizing the RGB array directly gives the same input.
        """
        import cv2

        h0, w0 = rgb.shape[:2]
        h1, w1 = yolo_input_size(h0, w0)
        resized = cv2.resize(np.ascontiguousarray(rgb), (w1, h1), interpolation=cv2.INTER_LINEAR)
        img = torch.from_numpy(resized).to(self.device).permute(2, 0, 1).float().div(255.0)
        return img.unsqueeze(0)

    def postprocess(self, pred: torch.Tensor, input_size: tuple[int, int],
                    image_size: tuple[int, int]) -> list[FaceBox]:
        """(1,K,16) raw rows -> boxes in original pixels, best score first (official NMS)."""
        rows = pred[0].detach().float().cpu()
        rows = rows[rows[:, 4] > self.conf_threshold]
        scores = rows[:, 4] * rows[:, 15]
        keep_conf = scores > self.conf_threshold
        rows, scores = rows[keep_conf], scores[keep_conf]
        if rows.numel() == 0:
            return []
        cx, cy, bw, bh = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
        boxes = torch.stack((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), dim=1)
        kept = non_max_suppression(boxes, scores, self.iou_threshold)
        (h1, w1), (h0, w0) = input_size, image_size
        sx, sy = w0 / w1, h0 / h1
        return [FaceBox(float(boxes[i, 0]) * sx, float(boxes[i, 1]) * sy, float(boxes[i, 2]) * sx,
                        float(boxes[i, 3]) * sy, float(scores[i])) for i in kept.tolist()]

    @torch.inference_mode()
    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        """Faces in a uint8 HxWx3 RGB image, in its pixels, highest score first."""
        img = self.preprocess(rgb)
        h1, w1 = img.shape[-2:]
        pred = self.model(img, self.grids_for(h1, w1))
        if isinstance(pred, (tuple, list)):  # some scripted heads also return raw feature maps
            pred = pred[0]
        return self.postprocess(pred, (h1, w1), rgb.shape[:2])


# --- OpenCV Haar cascade (offline fallback) ---------------------------------------------------

def default_haar_cascade_path() -> str | None:
    """Path of OpenCV's frontal-face cascade, or None when this OpenCV build ships none (OpenCV 5)."""
    import cv2

    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if not folder:
        return None
    path = os.path.join(folder, HAAR_CASCADE_FILE)
    return path if os.path.isfile(path) else None


class HaarFaceDetector:
    """OpenCV's `haarcascade_frontalface_default.xml`: offline, no weights to download, about 50 ms.

    Tuned for portraits: scaleFactor 1.1, minNeighbors 5, smallest face 8% of the image's
    short side (at least the cascade's 24 px window). Images whose long side exceeds
    `max_side` pixels are shrunk first (speed; boxes are mapped back). The score of a box is
    the cascade's final-stage weight (`levelWeights` of `detectMultiScale3`): larger means more
    face-like, unbounded (not a probability). It only finds roughly frontal, upright faces.
    """

    def __init__(self, cascade_path: str | os.PathLike | None = None, *, scale_factor: float = 1.1,
                 min_neighbors: int = 5, min_face_fraction: float = 0.08, max_side: int = 1280) -> None:

        self.cascade = haar_cascade(None if cascade_path is None else os.fspath(cascade_path))
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face_fraction = min_face_fraction
        self.max_side = max_side

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        """Faces in a uint8 HxWx3 RGB image, in its pixels, highest score first."""
        import cv2

        gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
        scale = min(1.0, self.max_side / max(gray.shape))
        if scale < 1.0:
            gray = cv2.resize(gray, (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale))),
                              interpolation=cv2.INTER_AREA)
        min_side = max(24, int(self.min_face_fraction * min(gray.shape)))
        rects, _levels, weights = self.cascade.detectMultiScale3(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(min_side, min_side),
            outputRejectLevels=True)
        faces = [FaceBox(x / scale, y / scale, (x + w) / scale, (y + h) / scale, float(score))
                 for (x, y, w, h), score in zip(np.asarray(rects).reshape(-1, 4).tolist(),
                                                np.asarray(weights).ravel().tolist())]
        return sorted(faces, key=lambda f: f.score, reverse=True)


@functools.lru_cache(maxsize=4)
def haar_cascade(cascade_path: str | None = None):
    """OpenCV's frontal-face cascade (or the one at `cascade_path`), read once per process."""
    import cv2

    path = cascade_path if cascade_path is not None else default_haar_cascade_path()
    if path is None or not os.path.isfile(path):
        where = f"{path!r} does not exist" if path is not None else (
            f"this OpenCV {cv2.__version__} ships no Haar cascades (OpenCV 5 wheels have none)")
        raise WeightsError(
            f"the built-in face detector needs OpenCV's {HAAR_CASCADE_FILE}, but {where}. Fixes: "
            f"install OpenCV 4 (pip install \"opencv-python<5\"), or give the face box yourself "
            f"(face_box=(x1, y1, x2, y2), CLI --face-box), or place yoloface_v5m.pt from the Sonic release "
            f"in the models folder to use the official detector")
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise WeightsError(f"OpenCV could not read the Haar cascade {path!r}; reinstall opencv-python<5")
    return cascade


@functools.lru_cache(maxsize=1)
def default_face_detector() -> HaarFaceDetector:
    """The offline Haar detector with its portrait settings, built once per process."""
    return HaarFaceDetector()


def load_yoloface_network(path: str | os.PathLike, what: str = "yoloface_v5m.pt face detector"):
    """The release detector's tensors in our `YoloFace` network (strict; a tiny test pass checks the wiring)."""
    from ..models.yoloface import STRIDES, release_names, yoloface_from_state_dict
    from ..weights.reading import check_is_file
    from ..weights.torchscript import read_torchscript_tensors

    tensors = read_torchscript_tensors(path, what)
    try:
        model = yoloface_from_state_dict(release_names(tensors))
        with torch.inference_mode():
            pred = model(torch.zeros(1, 3, 64, 64))
        if pred.shape != (1, model.model[-1].na * sum((64 // s) ** 2 for s in STRIDES), 16):
            raise ValueError(f"it gives {tuple(pred.shape)} rows for a 64x64 input")
    except (KeyError, ValueError, RuntimeError) as exc:  # missing tensor, wrong shapes, strict-load mismatch
        detail = (str(exc).strip().splitlines() or [""])[0][:300]  # torch's strict-load text spans many lines
        sample = ", ".join(sorted(tensors)[:4])
        raise WeightsError(
            f"{what} file {check_is_file(path, what)} is not a YOLOv5-face detector ({type(exc).__name__}: "
            f"{detail}; it has {len(tensors)} tensors, e.g. {sample}). "
            f"Download yoloface_v5m.pt from the Sonic release again, or remove it to use the built-in OpenCV "
            f"detector") from None
    return model


def load_face_detector(yoloface_path: str | os.PathLike | None = None,
                       device: str | torch.device = "cpu") -> FaceDetector:
    """The official YOLO detector when its file is given, else the offline Haar detector."""
    if yoloface_path is not None:
        return YoloFaceDetector.from_file(yoloface_path, device)
    return default_face_detector()


# --- choosing one face --------------------------------------------------------------------

def faces_left_to_right(boxes: Sequence[FaceBox]) -> list[FaceBox]:
    """Boxes ordered by the x of their centre (ties: by the y of their centre), left first."""
    return sorted(boxes, key=lambda b: (b.center[0], b.center[1]))


def select_face(boxes: Sequence[FaceBox], face_index: int | None = None, *,
                official_face_selection: bool = False) -> FaceBox:
    """Pick the face to animate.

    * default: the face with the largest box area (ties: the higher-scoring one).
    * `face_index=i`: the i-th face counted from the left of the picture (0 = leftmost, by
      box centre x), for pictures with several people.
    * `official_face_selection=True`: the official `AlignImage(maxface=True)` result, which is
      buggy: it compares every face with the *first* (highest-score) face's area without
      updating the running maximum, so it returns the last face larger than the first one,
      or the first one. It differs from the true largest only with 3 or more faces.

    `boxes` must be in detector order (best score first). No faces -> ParameterError.
    """
    if not boxes:
        raise ParameterError("select_face got no face boxes")
    if face_index is not None:
        ordered = faces_left_to_right(boxes)
        if isinstance(face_index, bool) or not isinstance(face_index, int) or not 0 <= face_index < len(ordered):
            listing = ", ".join(f"{i}: {b}" for i, b in enumerate(ordered))
            raise ParameterError(
                f"face_index={face_index!r} is out of range: {len(ordered)} face(s) found, numbered from the left "
                f"starting at 0 ({listing}); use a face_index from 0 to {len(ordered) - 1}")
        return ordered[face_index]
    if official_face_selection:
        chosen, first_area = boxes[0], boxes[0].area
        for box in boxes[1:]:
            if box.area > first_area:  # the reference never raises this bar (its bug, kept on purpose)
                chosen = box
        return chosen
    best = boxes[0]
    for box in boxes[1:]:
        if box.area > best.area:
            best = box
    return best
