"""No code runs from a TorchScript model file (issue 12, item 1).

Crafted archives, built here: a detector whose program writes a file with
`torch.from_file(..., shared=True)` (the attack that worked against `torch.jit.load`), one with
extra exported methods, and archives whose data.pkl asks pickle to call `os.system` or
`builtins.eval`. For each: nothing runs (the marker file never appears), and the outcome is a
clean load of the tensors or one clear `WeightsError`.
"""

from __future__ import annotations

import os
import pickle
import random
import warnings
import zipfile
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
from yoloface_reference import RefYoloFace, grids_for, randomize, save_traced

from sonic.errors import WeightsError
from sonic.inputs.face_detectors import YoloFaceDetector
from sonic.weights import read_torchscript_tensors

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
WHAT = "yoloface_v5m.pt face detector"


class FileWritingDetector(torch.nn.Module):
    """A real YOLOv5-face whose program also writes 8 bytes to `target` (and `target.export`)."""

    def __init__(self, inner: torch.nn.Module, target: str) -> None:
        super().__init__()
        self.inner = inner
        self.target = target

    def forward(self, img: torch.Tensor, grids: List[torch.Tensor]) -> torch.Tensor:
        written = torch.from_file(self.target, True, 8, dtype=torch.uint8)
        written.fill_(65)
        return self.inner(img, grids) + written[:1].float() * 0  # used, so TorchScript keeps the write

    @torch.jit.export
    def extra_method(self) -> int:
        written = torch.from_file(self.target + ".export", True, 8, dtype=torch.uint8)
        written.fill_(66)
        return int(written.sum())


class Boom:
    """Pickles as a call of `os.system` (what a crafted data.pkl would hold)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class EvalBoom(Boom):
    def __reduce__(self):
        return eval, (f"open({self.command!r}, 'w').close()",)


def jit_load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path))


@pytest.fixture(scope="module")
def reference():
    return randomize(RefYoloFace(base=4, depths=(1, 1, 1, 1, 1)), seed=11)


@pytest.fixture(scope="module")
def good_archive(tmp_path_factory, reference) -> Path:
    path = tmp_path_factory.mktemp("good") / "yoloface_v5m.pt"
    save_traced(reference, path)
    return path


@pytest.fixture(scope="module")
def writing_archive(tmp_path_factory, reference):
    """(archive, marker): the file-writing detector, scripted around the traced reference."""
    folder = tmp_path_factory.mktemp("evil")
    marker = folder / "marker"
    traced = torch.jit.trace(reference, (torch.rand(1, 3, 64, 96), grids_for(64, 96)), check_trace=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(FileWritingDetector(traced, str(marker))), str(folder / "evil.pt"))
    return folder / "evil.pt", marker


def rewrite(src: Path, dst: Path, *, data_pkl: bytes | None = None, compress: bool = False,
            cut_storage: str | None = None) -> Path:
    """A copy of a TorchScript zip with data.pkl replaced, entries deflated, or one storage cut short."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if data_pkl is not None and info.filename.endswith("/data.pkl"):
                data = data_pkl
            if cut_storage is not None and info.filename.endswith(f"/data/{cut_storage}"):
                data = data[: len(data) // 2]
            zout.writestr(info.filename, data, zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED)
    return dst


def test_the_attack_is_real_under_torch_jit_load(writing_archive):
    """Control: torch.jit.load + one call of the crafted file writes the marker."""
    path, marker = writing_archive
    with torch.jit.optimized_execution(False):
        jit_load(path)(torch.rand(1, 3, 64, 96), grids_for(64, 96))
    assert marker.read_bytes() == b"A" * 8
    marker.unlink()


def test_file_writing_detector_loads_cleanly_and_nothing_runs(writing_archive, reference):
    path, marker = writing_archive
    assert not marker.exists()
    detector = YoloFaceDetector.from_file(path)  # the wrapper's `inner.` prefix is recognised
    img = torch.rand(1, 3, 64, 96)
    with torch.inference_mode():
        torch.testing.assert_close(detector.model(img), reference(img, grids_for(64, 96)), rtol=1e-5, atol=1e-4)
    detector.detect(np.zeros((90, 90, 3), np.uint8))
    assert not marker.exists() and not Path(f"{marker}.export").exists()
    assert not hasattr(detector.model, "extra_method")


def test_read_gives_every_tensor_of_the_program(good_archive):
    program = jit_load(good_archive)
    tensors = read_torchscript_tensors(good_archive, WHAT)
    expected = program.state_dict()
    assert tensors.keys() == expected.keys()
    assert all(torch.equal(tensors[k], expected[k]) for k in expected)


@pytest.mark.parametrize("payload", [Boom, EvalBoom], ids=["os.system", "builtins.eval"])
def test_pickled_callables_are_refused_and_never_called(good_archive, tmp_path, payload):
    marker = tmp_path / "marker"
    command = f"touch {marker}" if payload is Boom else str(marker)
    crafted = pickle.dumps(payload(command), protocol=2)
    pickle.loads(crafted)  # control: a plain unpickler does run it
    assert marker.exists()
    marker.unlink()
    path = rewrite(good_archive, tmp_path / "yoloface_v5m.pt", data_pkl=crafted)
    with pytest.raises(WeightsError, match="refusing") as info:
        YoloFaceDetector.from_file(path)
    message = str(info.value)
    assert ("system" in message if payload is Boom else "eval" in message) and "\n" not in message
    assert not marker.exists()


def test_unknown_records_cannot_be_called_or_given_state(good_archive, tmp_path):
    # GLOBAL __torch__.X, empty args, REDUCE: calling a record is refused like any other call.
    call = b"\x80\x02c__torch__\nTop\nq\x00)R."
    with pytest.raises(WeightsError, match="refusing"):
        read_torchscript_tensors(rewrite(good_archive, tmp_path / "a.pt", data_pkl=call), WHAT)
    # BUILD on an OrderedDict (a real class): refused, no __setstate__ of a real class runs.
    build = b"\x80\x02ccollections\nOrderedDict\n)R}b."
    with pytest.raises(WeightsError, match="refusing"):
        read_torchscript_tensors(rewrite(good_archive, tmp_path / "b.pt", data_pkl=build), WHAT)
    # SETITEM on a record (only plain dicts/lists/sets may be filled).
    fill = b"\x80\x02c__torch__\nTop\n)\x81K\x01K\x02s."
    with pytest.raises(WeightsError, match="refusing"):
        read_torchscript_tensors(rewrite(good_archive, tmp_path / "c.pt", data_pkl=fill), WHAT)


def test_damaged_and_foreign_files_get_one_clear_error(good_archive, tmp_path):
    torch.save({"a": torch.zeros(1)}, tmp_path / "state.pt")
    (tmp_path / "noise.pt").write_bytes(random.Random(1).randbytes(1000))
    (tmp_path / "cut.pt").write_bytes(good_archive.read_bytes()[: good_archive.stat().st_size // 2])
    cases = {
        tmp_path / "state.pt": "plain torch.save file",
        tmp_path / "noise.pt": "not a TorchScript archive",
        tmp_path / "cut.pt": "damaged",
        rewrite(good_archive, tmp_path / "deflated.pt", compress=True): "compressed",
        rewrite(good_archive, tmp_path / "short.pt", cut_storage="0"): "claims",
        tmp_path / "missing.pt": "does not exist",
    }
    for path, expected in cases.items():
        with pytest.raises(WeightsError, match=expected) as info:
            YoloFaceDetector.from_file(path)
        assert "\n" not in str(info.value), path.name


def test_tensor_views_must_stay_inside_their_storage():
    from sonic.weights.torchscript import _rebuild_tensor, _Storage

    storage = _Storage(torch.arange(6.0))
    assert _rebuild_tensor(storage, 2, (2, 2), (2, 1)).tolist() == [[2.0, 3.0], [4.0, 5.0]]
    for offset, size, stride in ((3, (2, 2), (2, 1)), (0, (7,), (1,)), (0, (2,), (-1,))):
        with pytest.raises(ValueError):
            _rebuild_tensor(storage, offset, size, stride)


def test_doctor_checks_the_detector_the_same_way(tiny_zoo, tmp_path, writing_archive, good_archive):
    """doctor loads the detector's tensors strictly and never runs its program."""
    import shutil

    from sonic.weights.loading import doctor_report

    zoo = shutil.copytree(tiny_zoo, tmp_path / "checkpoints")
    program, marker = writing_archive
    shutil.copy(program, zoo / "yoloface_v5m.pt")
    ok, lines = doctor_report(zoo)
    assert ok and any(line.startswith("ok       face detector") for line in lines)
    assert not marker.exists()
    boom_marker = tmp_path / "boom"
    rewrite(good_archive, zoo / "yoloface_v5m.pt", data_pkl=pickle.dumps(Boom(f"touch {boom_marker}"), protocol=2))
    ok, lines = doctor_report(zoo)
    broken = [line for line in lines if line.startswith("BROKEN   face detector")]
    assert not ok and len(broken) == 1 and "refusing" in broken[0] and "system" in broken[0]
    assert not boom_marker.exists()
