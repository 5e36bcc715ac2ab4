"""Loading a whole model folder: wrong files in the right places give clear errors."""

from __future__ import annotations

import shutil

import pytest

from sonic.errors import WeightsError
from sonic.weights.loading import doctor_report, load_models


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
    with pytest.raises(WeightsError, match="is damaged or incomplete"):
        load_models(zoo_copy, svd_checkpoint=bad)


def test_single_file_svd_layout_generates_the_same_frames(tiny_zoo, tmp_path, portrait, torch_threads):
    """ComfyUI layout with the SVD VAE + CLIP in models/checkpoints/svd_xt.safetensors (original keys)."""
    import torch

    from helpers import FACE, GOLDEN, SR, speech_like
    from sonic import SonicPipeline
    from sonic.tools.zoo import write_tiny_zoo

    models = write_tiny_zoo(tmp_path / "comfy", layout="comfyui", svd_single_file=True, fixtures_dir=GOLDEN)
    single = models / "checkpoints" / "svd_xt.safetensors"
    assert single.is_file() and not (models / "sonic" / "stable-video-diffusion-img2vid-xt" / "vae").exists()
    official = SonicPipeline.from_pretrained(tiny_zoo, device="cpu", dtype="fp32", face_detector=False)
    comfy = SonicPipeline.from_pretrained(models, device="cpu", dtype="fp32", face_detector=False)
    for name in ("vae", "image_encoder"):
        expected, got = (getattr(p.models, name).state_dict() for p in (official, comfy))
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected), name
    settings = dict(face_box=FACE, min_resolution=64, inference_steps=1, seed=11, interpolate=False)
    audio = (speech_like(0.4), SR)
    assert torch.equal(comfy(portrait, audio, **settings).frames, official(portrait, audio, **settings).frames)
    # The same file given explicitly (svd_checkpoint=, the ComfyUI loader's choice) loads the same way.
    explicit = load_models(models / "sonic", svd_checkpoint=single, need_interpolation=False)
    assert torch.equal(explicit.vae.decoder.conv_in.weight, official.models.vae.decoder.conv_in.weight)
    ok, lines = doctor_report(models)
    assert ok and any(line.startswith("ok       SVD VAE + CLIP") and str(single) in line for line in lines)


def test_truncated_checkpoint_message_is_whole_sentences_and_says_what_to_do(zoo_copy):
    unet = zoo_copy / "Sonic" / "unet.pth"
    data = unet.read_bytes()
    unet.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError) as info:
        load_models(zoo_copy)
    message = str(info.value)
    assert str(unet) in message and "damaged or incomplete" in message
    assert "failed finding central directory)" in message  # torch's one useful sentence, ended where it ends
    assert "internal miniz error" not in message and "checkpoint file is)" not in message  # no boilerplate cut mid-way
    assert "download it again" in message and "python -m sonic doctor --models" in message
    ok, lines = doctor_report(zoo_copy)
    assert not ok and any(line.startswith("BROKEN   Sonic UNet") and "damaged" in line for line in lines)
