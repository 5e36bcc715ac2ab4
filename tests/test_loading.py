"""Loading a whole model folder: wrong files in the right places give clear errors."""

from __future__ import annotations

import shutil

import pytest

from sonic.errors import WeightsError
from sonic.loading import doctor_report, load_models


@pytest.fixture()
def zoo_copy(tiny_zoo, tmp_path):
    return shutil.copytree(tiny_zoo, tmp_path / "checkpoints")


def test_swapped_audio_adapters_are_named(zoo_copy):
    token, bucket = zoo_copy / "Sonic" / "audio2token.pth", zoo_copy / "Sonic" / "audio2bucket.pth"
    token.rename(zoo_copy / "swap.tmp")
    bucket.rename(token)
    (zoo_copy / "swap.tmp").rename(bucket)
    with pytest.raises(WeightsError, match="swapped"):
        load_models(zoo_copy)
    ok, lines = doctor_report(zoo_copy)
    assert not ok and any(line.startswith("BROKEN   audio2token") and "swapped" in line for line in lines)


def test_unreadable_svd_single_file_is_a_weights_error(zoo_copy, tmp_path):
    bad = tmp_path / "svd_xt.safetensors"
    bad.write_bytes(b"\xff" * 64)
    with pytest.raises(WeightsError, match="not a readable .safetensors SVD checkpoint"):
        load_models(zoo_copy, svd_checkpoint=bad)
