"""Our YOLOv5-face network (sonic.models.yoloface) against an independent TorchScript YOLOv5-face.

The reference (tests/yoloface_reference.py) is written separately, traced with the release
call `model(img, grids)` and saved like `yoloface_v5m.pt`. We read only its tensors and must
reproduce what its TorchScript program computes.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from yoloface_reference import RefYoloFace, grids_for, randomize, save_traced

from sonic.errors import WeightsError
from sonic.inputs.face_detectors import YoloFaceDetector, load_yoloface_network
from sonic.models.yoloface import random_yoloface, release_names, yoloface_shapes
from sonic.weights import read_torchscript_tensors

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def jit_load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path))


@pytest.mark.parametrize(("focus", "fused"), [(False, False), (True, True)],
                         ids=["stemblock-batchnorm", "focus-fused"])  # the two stems x the two conv forms
def test_our_network_matches_the_torchscript_program(tmp_path, focus, fused):
    reference = randomize(RefYoloFace(base=4, depths=(1, 2, 1, 2, 1), focus=focus, fused=fused), seed=7)
    path = tmp_path / "yoloface.pt"
    save_traced(reference, path, 64, 96)
    program = jit_load(path)  # our own crafted file: running it here is the control
    ours = load_yoloface_network(path)
    assert set(ours.state_dict()) == set(reference.state_dict())  # release names, strict
    generator = torch.Generator().manual_seed(1)
    with torch.inference_mode(), torch.jit.optimized_execution(False):
        for h, w in ((64, 96), (160, 128)):  # the traced size and another
            img = torch.rand(1, 3, h, w, generator=generator)
            expected = program(img, grids_for(h, w))
            assert expected.shape == (1, 3 * sum((h // s) * (w // s) for s in (8, 16, 32)), 16)
            torch.testing.assert_close(ours(img, grids_for(h, w)), expected, rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(ours(img), expected, rtol=1e-5, atol=1e-4)  # grids built inside


def test_detector_boxes_equal_the_program_boxes(tmp_path):
    """End to end (resize, decode, NMS): boxes from our network equal boxes from the program's rows."""
    reference = randomize(RefYoloFace(base=4, depths=(1, 1, 1, 1, 1)), seed=3)
    with torch.no_grad():  # confident detections so that NMS has work to do
        reference.model[-1].m[2].bias.view(3, 16)[:, 4].fill_(4.0)  # stride 32 only: few candidates
        reference.model[-1].m[2].bias.view(3, 16)[:, 15].fill_(4.0)
    path = tmp_path / "yoloface.pt"
    save_traced(reference, path)
    image = np.random.default_rng(0).integers(0, 256, (250, 200, 3), dtype=np.uint8)  # detector input 512x416
    ours = YoloFaceDetector.from_file(path)
    program = YoloFaceDetector(jit_load(path))
    faces = ours.detect(image)
    with torch.jit.optimized_execution(False):  # skip TorchScript's slow profiling passes
        assert faces and faces == program.detect(image)
    assert all(0 <= f.score <= 1 for f in faces)


def test_tensor_names_and_count_of_a_full_size_yolov5m_face():
    """The YOLOv5m-face layout (stem 48 channels, C3 depths 2/6/6/2/2) has ~21.1 M parameters,
    which matches the release file's 84.6 MB of fp32 (SPEC 2.1)."""
    shapes = yoloface_shapes(48, (2, 6, 6, 2, 2), fused=True)
    count = sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith(("anchors", "anchor_grid")))
    assert 21.0e6 < count < 21.1e6
    assert 4 * count < 84_574_759 < 4 * count + 400_000  # the rest is the archive's code and pickles
    assert shapes["model.23.m.2.weight"] == (48, 768, 1, 1)


def test_wrapper_prefix_is_removed_and_strictness_holds(tmp_path):
    tensors = {f"detector.{k}": v for k, v in random_yoloface(0).state_dict().items()}
    assert set(release_names(tensors)) == {k[len("detector."):] for k in tensors}
    state = release_names(tensors)
    from sonic.models.yoloface import yoloface_from_state_dict

    with pytest.raises(RuntimeError, match="Unexpected"):
        yoloface_from_state_dict({**state, "model.23.extra": torch.zeros(1)})
    without = dict(state)
    del without["model.8.cv3.conv.weight"]
    with pytest.raises((KeyError, RuntimeError)):
        yoloface_from_state_dict(without)
    # Strides kept as plain attributes by a scripted export: checked, not loaded.
    strides = torch.tensor([8.0, 16.0, 32.0])
    yoloface_from_state_dict({**state, "stride": strides, "model.23.stride": strides})
    with pytest.raises(ValueError, match="strides"):
        yoloface_from_state_dict({**state, "model.23.stride": strides * 2})
    # No anchors in the file: the YOLOv5-face defaults; an fp16 file is cast to fp32.
    bare = {k: v.half() if v.is_floating_point() else v for k, v in state.items() if "anchor" not in k}
    model = yoloface_from_state_dict(bare)
    assert model.model[-1].anchor_grid[2].flatten().tolist() == [146, 217, 231, 300, 335, 433]
    assert model.model[0].stem_1.conv.weight.dtype == torch.float32


def test_zoo_detector_is_a_traced_yoloface_that_we_read_without_running(tmp_path):
    from sonic.tools.zoo import write_tiny_face_detector

    path = write_tiny_face_detector(tmp_path / "yoloface_v5m.pt")
    tensors = read_torchscript_tensors(path, "zoo detector")
    assert "model.0.stem_1.conv.weight" in tensors and "model.23.anchor_grid" in tensors
    ours = load_yoloface_network(path)
    img = torch.rand(1, 3, 96, 64)
    with torch.inference_mode(), torch.jit.optimized_execution(False):
        torch.testing.assert_close(ours(img), jit_load(path)(img, grids_for(96, 64)), rtol=1e-5, atol=1e-4)
    from sonic.models.yoloface import random_yoloface
    from sonic.tools.zoo import TINY_YOLO_SEED

    seeded = random_yoloface(TINY_YOLO_SEED).state_dict()  # the zoo's detector is reproducible
    assert all(torch.equal(seeded[k], tensors[k]) for k in seeded)


def test_other_torchscript_models_are_refused_with_one_clear_error(tmp_path):
    class NotYolo(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(NotYolo()), str(tmp_path / "other.pt"))
    with pytest.raises(WeightsError, match="is not a YOLOv5-face detector") as info:
        YoloFaceDetector.from_file(tmp_path / "other.pt")
    assert "\n" not in str(info.value) and "conv.weight" in str(info.value)
