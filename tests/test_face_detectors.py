"""Face detectors: the YOLOv5-face call convention (with a tiny TorchScript stand-in), NMS,
OpenCV's Haar cascade on real photos, and face selection."""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import pytest
import skimage
import torch

from sonic.errors import ParameterError, WeightsError
from sonic.inputs.face_detectors import (FaceBox, HaarFaceDetector, YoloFaceDetector, make_yolo_grids, non_max_suppression,
                                  select_face, yolo_input_size)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"  # test images shipped with scikit-image


def read_rgb(name: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(SKIMAGE_DATA / name).convert("RGB"))


# --- a tiny YOLO-face stand-in -------------------------------------------------------------------

class TinyYoloFace(torch.nn.Module):
    """Same signature as yoloface_v5m.pt: (img, grids) -> (1, K, 16) rows in input pixels.

    One row per "hot cell" (level, gy, gx, w, h, cls_conf). Like a real detection head the box
    centre comes from the grid tensor, `(grid + 0.5) * stride`, so a wrong grid layout moves
    the boxes; obj_conf is the RED channel of `img` at the box centre, so the input must be
    RGB in [0, 1].
    """

    def __init__(self, cells: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("cells", cells)

    def forward(self, img: torch.Tensor, grids: List[torch.Tensor]) -> torch.Tensor:
        strides = [8.0, 16.0, 32.0]
        rows: List[torch.Tensor] = []
        for i in range(self.cells.shape[0]):
            cell = self.cells[i]
            level, gy, gx = int(cell[0]), int(cell[1]), int(cell[2])
            grid = grids[level]
            stride = strides[level]
            assert grid.shape[2] * stride == img.shape[2] and grid.shape[3] * stride == img.shape[3]
            cx = (grid[0, 0, gy, gx, 0] + 0.5) * stride
            cy = (grid[0, 0, gy, gx, 1] + 0.5) * stride
            row = torch.zeros(16)
            row[0], row[1], row[2], row[3] = cx, cy, cell[3], cell[4]
            row[4] = img[0, 0, int(cy), int(cx)]
            row[15] = cell[5]
            rows.append(row)
        return torch.stack(rows).unsqueeze(0)


# Image 600x400 -> detector input 640x416 (x scale 600/640, y scale 400/416).
W0, H0 = 600, 400
CELLS = {  # name: (level, gy, gx, w, h, cls_conf); centres in input px = (g + 0.5) * stride
    "A": (1, 10, 10, 80, 80, 0.95),     # centre (168, 168), area 6400
    "A_dup": (0, 21, 21, 84, 84, 0.92),  # centre (172, 172): IoU with A ~0.83 -> merged into A
    "B": (2, 6, 14, 160, 200, 0.90),    # centre (464, 208), area 32000: the largest
    "C": (1, 20, 34, 100, 120, 0.85),   # centre (552, 328), area 12000
    "D": (1, 22, 4, 40, 40, 0.40),      # obj 1.0 but obj*cls = 0.4 -> dropped
    "E": (0, 45, 30, 40, 40, 0.99),     # painted red 77/255 -> obj 0.30 -> dropped
}


def cell_centre(name: str) -> tuple[float, float]:
    level, gy, gx = CELLS[name][:3]
    stride = (8, 16, 32)[level]
    return (gx + 0.5) * stride, (gy + 0.5) * stride


def expected_box(name: str) -> tuple[float, float, float, float]:
    """The xyxy box of a cell mapped back to original pixels."""
    cx, cy = cell_centre(name)
    w, h = CELLS[name][3:5]
    sx, sy = W0 / 640, H0 / 416
    return ((cx - w / 2) * sx, (cy - h / 2) * sy, (cx + w / 2) * sx, (cy + h / 2) * sy)


@pytest.fixture(scope="module")
def tiny_yolo():
    cells = torch.tensor([CELLS[k] for k in CELLS], dtype=torch.float32)
    return torch.jit.script(TinyYoloFace(cells))


@pytest.fixture(scope="module")
def painted_image() -> np.ndarray:
    """Blue background (red 0); red patches (255) under A, B, C, D and a dim one (77) under E."""
    img = np.zeros((H0, W0, 3), np.uint8)
    img[..., 2] = 255
    for name in ("A", "B", "C", "D", "E"):
        cx, cy = cell_centre(name)
        x, y = round(cx * W0 / 640), round(cy * H0 / 416)
        img[y - 12:y + 12, x - 12:x + 12] = (255, 0, 0) if name != "E" else (77, 0, 255)
    return img


def test_yolo_input_size_and_grids():
    assert yolo_input_size(400, 600) == (416, 640)
    assert yolo_input_size(512, 512) == (416, 416)
    assert yolo_input_size(300, 451) == (416, 640)  # 451 * 416/300 = 625.4 -> 625 -> up to 640
    grids = make_yolo_grids(416, 640)
    assert [tuple(g.shape) for g in grids] == [(1, 1, 52, 80, 2), (1, 1, 26, 40, 2), (1, 1, 13, 20, 2)]
    assert grids[0].dtype == torch.float32
    assert grids[1][0, 0, 3, 7].tolist() == [7.0, 3.0]  # (x_index, y_index)


def test_yolo_boxes_mapped_merged_and_filtered(tiny_yolo, painted_image):
    detector = YoloFaceDetector(tiny_yolo)
    faces = detector.detect(painted_image)
    # D (low cls) and E (low obj) dropped; A_dup merged into A by NMS; sorted by score.
    assert len(faces) == 3
    for face, name in zip(faces, ("A", "B", "C")):
        np.testing.assert_allclose(face.as_tuple(), expected_box(name), atol=1e-3)
        assert face.score == pytest.approx(CELLS[name][5], abs=1e-5)
    assert (416, 640) in detector._grids and detector.grids_for(416, 640) is detector.grids_for(416, 640)


def test_yolo_input_is_rgb_in_unit_range(tiny_yolo, painted_image):
    """Feeding BGR would read the blue background as obj_conf: then only E would survive."""
    faces = YoloFaceDetector(tiny_yolo).detect(np.ascontiguousarray(painted_image[..., ::-1]))
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].as_tuple(), expected_box("E"), atol=1e-3)


def test_largest_face_selection_with_three_faces(tiny_yolo, painted_image):
    faces = YoloFaceDetector(tiny_yolo).detect(painted_image)
    b_box, c_box = expected_box("B"), expected_box("C")
    np.testing.assert_allclose(select_face(faces).as_tuple(), b_box, atol=1e-3)
    # The reference's bug keeps the last face larger than the FIRST one: C, not the truly largest B.
    np.testing.assert_allclose(select_face(faces, official_face_selection=True).as_tuple(), c_box, atol=1e-3)
    np.testing.assert_allclose(select_face(faces, 2).as_tuple(), c_box, atol=1e-3)  # left to right: A, B, C


def test_prepare_portrait_uses_the_given_detector(tiny_yolo, painted_image):
    from sonic.inputs.portrait import prepare_portrait

    detector = YoloFaceDetector(tiny_yolo)
    largest = prepare_portrait(painted_image, detector=detector, crop=False)
    np.testing.assert_allclose(largest.face_box.as_tuple(), expected_box("B"), atol=1e-3)
    official = prepare_portrait(painted_image, detector=detector, crop=False, official_face_selection=True)
    np.testing.assert_allclose(official.face_box.as_tuple(), expected_box("C"), atol=1e-3)


def test_yolo_from_file_never_runs_the_archive_program(tiny_yolo, tmp_path):
    """The stand-in works when handed over as a module, but as a file its program is never run:
    it holds no YOLOv5-face tensors, so loading it is refused (tests/test_yoloface.py loads real ones)."""
    path = tmp_path / "yoloface_tiny.pt"
    torch.jit.save(tiny_yolo, str(path))
    with pytest.raises(WeightsError, match="not a YOLOv5-face detector"):
        YoloFaceDetector.from_file(path)
    with pytest.raises(WeightsError, match="does not exist"):
        YoloFaceDetector.from_file(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torchscript archive")
    with pytest.raises(WeightsError, match="not a TorchScript"):
        YoloFaceDetector.from_file(garbage)


def test_nms_matches_greedy_definition():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.5], [21, 20, 30, 30]],
                         dtype=torch.float32)
    scores = torch.tensor([0.6, 0.9, 0.5, 0.8, 0.7])
    # 1 (0.9) kills 0 (IoU 0.68) and 3 (IoU 0.72); 4 (0.7) kills 2 (IoU 0.9).
    assert non_max_suppression(boxes, scores, 0.45).tolist() == [1, 4]
    assert non_max_suppression(boxes, scores, 0.96).tolist() == [1, 3, 4, 0, 2]  # 0 vs 3: IoU 0.952
    assert non_max_suppression(boxes[:0], scores[:0], 0.45).numel() == 0


# --- OpenCV Haar --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def haar():
    return HaarFaceDetector()


def test_haar_finds_the_astronaut(haar):
    faces = haar.detect(read_rgb("astronaut.png"))
    assert len(faces) == 1
    face = faces[0]
    # Eileen Collins' face spans about x 175-275, y 60-165 in the 512x512 picture.
    assert 160 < face.x1 < 195 and 255 < face.x2 < 290 and 50 < face.y1 < 85 and 145 < face.y2 < 180
    assert face.score > 0


@pytest.mark.parametrize("name", ["chelsea.png", "coffee.png", "rocket.jpg"])
def test_haar_finds_no_face_in_a_cat_a_cup_and_a_rocket(haar, name):
    assert haar.detect(read_rgb(name)) == []


def test_haar_boxes_sorted_by_score_in_original_pixels(haar):
    astronaut = read_rgb("astronaut.png")
    big = np.concatenate([astronaut, astronaut[:, ::-1]], axis=1)
    big = np.concatenate([big, big], axis=0)  # 2048 px wide: above max_side, so it is shrunk first
    small = HaarFaceDetector(max_side=1024).detect(big)
    assert len(small) == 4
    assert [f.score for f in small] == sorted((f.score for f in small), reverse=True)
    full = haar.detect(big)
    for f in small:  # boxes found on the shrunk copy land on the faces of the full picture
        assert max(min(f.x2, g.x2) - max(f.x1, g.x1) for g in full) > 0.7 * f.width


def test_haar_missing_cascade_names_the_fixes(tmp_path):
    with pytest.raises(WeightsError) as info:
        HaarFaceDetector(cascade_path=tmp_path / "none.xml")
    message = str(info.value)
    assert "opencv-python<5" in message and "face_box" in message and "yoloface_v5m.pt" in message


# --- selection ------------------------------------------------------------------------------------

def test_select_face_order_and_errors():
    right = FaceBox(300, 10, 400, 110, 0.9)
    left = FaceBox(10, 20, 60, 70, 0.8)
    middle = FaceBox(150, 0, 230, 80, 0.7)
    boxes = [right, left, middle]
    assert select_face(boxes) is right
    assert [select_face(boxes, i) for i in range(3)] == [left, middle, right]
    with pytest.raises(ParameterError) as info:
        select_face(boxes, 3)
    assert "3 face(s)" in str(info.value) and "(10, 20, 60, 70)" in str(info.value)
    with pytest.raises(ParameterError):
        select_face(boxes, -1)
    with pytest.raises(ParameterError):
        select_face([])
    assert FaceBox(1, 2, 4, 8).area == 18 and FaceBox(1, 2, 4, 8).center == (2.5, 5.0)
