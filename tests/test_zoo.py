"""The tiny model zoo (sonic.tools.zoo) and finding model files in both layouts (sonic.weights.find_model_files)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import GOLDEN, load_golden

from sonic.errors import ParameterError, WeightsError
from sonic.weights import (BUILTIN_SVD_CONFIGS, HINTS, check_state_dict, convert_checkpoints, find_model_files,
                           read_state_dict, rife_state_dict, safetensors_digests, shapes_of)
from sonic.tools.zoo import write_tiny_zoo


@pytest.fixture(scope="module")
def zoos(tmp_path_factory):
    """One official-layout zoo (pickles + face detector) and one ComfyUI-layout zoo (safetensors)."""
    base = tmp_path_factory.mktemp("zoos")
    official = write_tiny_zoo(base / "checkpoints", with_face_detector=True)
    comfy = write_tiny_zoo(base / "comfy", layout="comfyui", file_format="safetensors")
    return official, comfy


def _golden_unet_shapes() -> dict[str, tuple]:
    index = json.loads((GOLDEN / "unet_forward" / "weights.safetensors.index.json").read_text())
    shapes = {}
    for shard in sorted(set(index["weight_map"].values())):
        shapes.update(shapes_of(load_golden("unet_forward", shard)))
    return shapes


def test_zoo_files_load_safely_with_the_golden_keys(zoos):
    official, comfy = zoos
    for models_dir in (official, comfy):
        files = find_model_files(models_dir, need_face_detector=False)
        expected = {
            files.unet: ("unet", _golden_unet_shapes(), 440),
            files.audio2token: ("audio2token", shapes_of(load_golden("audio2token", "weights.safetensors")), 8),
            files.audio2bucket: ("audio2bucket", shapes_of(load_golden("audio2bucket", "weights.safetensors")), 6),
        }
        for path, (role, shapes, count) in expected.items():
            state = read_state_dict(path, what=role)
            assert len(state) == count
            check_state_dict(state, shapes, path=path, what=role, hints=HINTS[role])
        rife = read_state_dict(files.rife, what="RIFE")
        assert len(rife) == 160 and all(k.startswith("module.") for k in rife)  # as released
        assert len(rife_state_dict(rife)) == 160
        whisper = read_state_dict(files.whisper_weights, what="Whisper")
        golden_whisper = load_golden("audio_features", "whisper_weights.safetensors")
        assert set(whisper) == {f"model.{k}" for k in golden_whisper}
        assert torch.equal(whisper["model.encoder.conv1.weight"], golden_whisper["encoder.conv1.weight"])
        vae = read_state_dict(files.vae_weights, what="VAE")
        assert shapes_of(vae) == shapes_of(load_golden("vae", "weights.safetensors"))


def test_official_layout_is_found(zoos):
    official, _ = zoos
    files = find_model_files(official)
    assert files.layout == "official"
    assert files.unet == official / "Sonic" / "unet.pth"
    assert files.rife == official / "RIFE" / "flownet.pkl"
    assert files.face_detector == official / "yoloface_v5m.pt"
    svd = official / "stable-video-diffusion-img2vid-xt"
    assert files.svd_dir == svd and files.svd_checkpoint is None
    assert files.unet_config == svd / "unet" / "config.json"
    assert files.scheduler_config == svd / "scheduler" / "scheduler_config.json"
    assert files.image_encoder_weights == svd / "image_encoder" / "model.safetensors"
    assert files.whisper_preprocessor == official / "whisper-tiny" / "preprocessor_config.json"
    unet_config = json.loads(files.unet_config.read_text())
    assert unet_config["_class_name"] == "UNetSpatioTemporalConditionModel" and unet_config["block_out_channels"] == [32, 64]
    assert json.loads(files.scheduler_config.read_text())["use_karras_sigmas"] is True


def test_comfyui_layout_is_found_from_models_and_from_models_sonic(zoos):
    _, comfy = zoos
    assert comfy.name == "models"
    sonic = comfy / "sonic"
    for start in (comfy, sonic):
        files = find_model_files(start, need_face_detector=False)
        assert files.layout == "comfyui"
        assert files.unet == sonic / "unet.safetensors"
        assert files.rife == sonic / "flownet.safetensors"
        assert files.whisper_dir == sonic / "whisper-tiny"
        assert files.svd_dir == sonic / "stable-video-diffusion-img2vid-xt"
        assert files.face_detector is None


def test_tiny_face_detector_is_a_yoloface_archive_read_without_running(zoos):
    from sonic.inputs.face_detectors import YoloFaceDetector

    official, _ = zoos
    detector = YoloFaceDetector.from_file(official / "yoloface_v5m.pt")  # our network, the file's tensors
    h1, w1 = 448, 416
    pred = detector.model(torch.rand(1, 3, h1, w1))
    assert pred.shape == (1, 3 * sum((h1 // s) * (w1 // s) for s in (8, 16, 32)), 16)
    assert 0 <= pred[..., 4].min() and pred[..., 4].max() <= 1  # objectness is a probability


def test_tiny_clip_loads_strictly_in_transformers_and_is_deterministic(zoos):
    from transformers import CLIPVisionModelWithProjection

    official, comfy = zoos
    folders = [d / "stable-video-diffusion-img2vid-xt" / "image_encoder" for d in (official, comfy / "sonic")]
    assert safetensors_digests(folders[0] / "model.safetensors") == safetensors_digests(folders[1] / "model.safetensors")
    model, info = CLIPVisionModelWithProjection.from_pretrained(str(folders[0]), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    with torch.no_grad():
        embeds = model(pixel_values=torch.zeros(1, 3, 224, 224)).image_embeds
    assert embeds.shape == (1, 12)  # the golden models' CLIP width


def test_missing_files_are_all_listed_in_one_error(zoos, tmp_path):
    official, _ = zoos
    broken = tmp_path / "checkpoints"
    shutil.copytree(official, broken)
    (broken / "Sonic" / "audio2bucket.pth").unlink()
    (broken / "RIFE" / "flownet.pkl").unlink()
    shutil.rmtree(broken / "whisper-tiny")
    shutil.rmtree(broken / "stable-video-diffusion-img2vid-xt" / "image_encoder")
    with pytest.raises(WeightsError) as info:
        find_model_files(broken)
    message = str(info.value)
    for target in ("Sonic/audio2bucket.pth", "RIFE/flownet.pkl", "whisper-tiny/config.json",
                   "whisper-tiny/model.safetensors", "image_encoder/config.json", "image_encoder/model.safetensors"):
        assert str(broken / target) in message or target in message, target
    assert "LeonJoe13/Sonic" in message and "openai/whisper-tiny" in message
    assert "stabilityai/stable-video-diffusion-img2vid-xt" in message
    assert str(broken) in message and "unet.pth" not in message  # present files are not listed
    assert message.count("\n  - ") == 6
    # RIFE may be absent when interpolation is off; the rest is still required.
    with pytest.raises(WeightsError) as info:
        find_model_files(broken, need_interpolation=False)
    assert "flownet" not in str(info.value) and "audio2bucket" in str(info.value)


def test_empty_comfyui_models_folder_lists_every_file_at_its_comfyui_path(tmp_path):
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    with pytest.raises(WeightsError) as info:
        find_model_files(models)
    message = str(info.value)
    sonic = models / "sonic"
    for target in (sonic / "unet.pth", sonic / "audio2token.pth", sonic / "audio2bucket.pth",
                   sonic / "RIFE" / "flownet.pkl", sonic / "yoloface_v5m.pt", sonic / "whisper-tiny" / "config.json",
                   sonic / "stable-video-diffusion-img2vid-xt" / "vae" / "diffusion_pytorch_model.safetensors"):
        assert str(target) in message, target
    assert "svd_xt.safetensors" in message and str(models / "checkpoints") in message
    with pytest.raises(WeightsError, match="does not exist"):
        find_model_files(tmp_path / "nowhere")


def test_single_file_svd_uses_the_builtin_configs(zoos, tmp_path):
    _, comfy = zoos
    models = tmp_path / "models"
    shutil.copytree(comfy, models)
    shutil.rmtree(models / "sonic" / "stable-video-diffusion-img2vid-xt")
    (models / "checkpoints").mkdir()
    single = models / "checkpoints" / "svd_xt_1_1.safetensors"
    single.write_bytes(b"placeholder: only its presence matters here")
    files = find_model_files(models, need_face_detector=False)
    assert files.svd_checkpoint == single and files.svd_dir is None and files.vae_weights is None
    assert files.unet_config == BUILTIN_SVD_CONFIGS / "unet" / "config.json"
    assert files.scheduler_config == BUILTIN_SVD_CONFIGS / "scheduler" / "scheduler_config.json"
    assert json.loads(files.image_encoder_config.read_text())["hidden_size"] == 1280
    assert json.loads(files.unet_config.read_text())["block_out_channels"] == [320, 640, 1280, 1280]
    explicit = tmp_path / "elsewhere.safetensors"
    with pytest.raises(WeightsError, match="svd_checkpoint"):
        find_model_files(models, need_face_detector=False, svd_checkpoint=explicit)
    explicit.write_bytes(b"x")
    assert find_model_files(models, need_face_detector=False, svd_checkpoint=explicit).svd_checkpoint == explicit


def test_builtin_svd_configs_equal_the_reference_configs():
    from conftest import SVD_CONFIGS

    for ref in SVD_CONFIGS.rglob("*.json"):
        assert (BUILTIN_SVD_CONFIGS / ref.relative_to(SVD_CONFIGS)).read_text() == ref.read_text()


def test_wrong_file_in_the_right_place_is_diagnosed(zoos, tmp_path):
    official, _ = zoos
    folder = tmp_path / "checkpoints"
    shutil.copytree(official, folder)
    shutil.copyfile(folder / "Sonic" / "audio2bucket.pth", folder / "Sonic" / "audio2token.pth")
    files = find_model_files(folder)
    expected = shapes_of(load_golden("audio2token", "weights.safetensors"))
    with pytest.raises(WeightsError, match="looks like audio2bucket.pth, not audio2token.pth"):
        check_state_dict(read_state_dict(files.audio2token, what="Sonic audio2token"), expected,
                         path=files.audio2token, what="Sonic audio2token", hints=HINTS["audio2token"])


def test_convert_the_pickle_zoo_then_the_finder_prefers_twins(zoos, tmp_path):
    official, _ = zoos
    folder = tmp_path / "checkpoints"
    shutil.copytree(official, folder)
    twins = convert_checkpoints(folder)
    assert {p.relative_to(folder).as_posix() for p in twins} == {
        "Sonic/unet.safetensors", "Sonic/audio2token.safetensors", "Sonic/audio2bucket.safetensors",
        "RIFE/flownet.safetensors"}  # whisper is already safetensors; the TorchScript detector is never converted
    files = find_model_files(folder)
    assert files.unet.name == "unet.safetensors" and files.rife.name == "flownet.safetensors"
    assert files.face_detector.name == "yoloface_v5m.pt"
    original = read_state_dict(official / "Sonic" / "unet.pth", what="unet")
    twin = read_state_dict(files.unet, what="unet")
    assert set(twin) == set(original) and all(torch.equal(twin[k], original[k]) for k in original)


def test_bad_arguments_and_missing_fixtures(tmp_path):
    with pytest.raises(ParameterError, match="layout"):
        write_tiny_zoo(tmp_path, layout="diffusers")
    with pytest.raises(ParameterError, match="file_format"):
        write_tiny_zoo(tmp_path, file_format="gguf")
    with pytest.raises(WeightsError, match="golden fixtures not found"):
        write_tiny_zoo(tmp_path, fixtures_dir=tmp_path / "no-fixtures")
    assert not any(tmp_path.iterdir())  # nothing written before the checks


def test_single_file_zoo_keeps_only_the_configs_shapes_cannot_give(tmp_path):
    models = write_tiny_zoo(tmp_path / "comfy", layout="comfyui", svd_single_file=True)
    svd = models / "sonic" / "stable-video-diffusion-img2vid-xt"
    files = find_model_files(models, need_face_detector=False)
    assert files.svd_checkpoint == models / "checkpoints" / "svd_xt.safetensors" and files.vae_weights is None
    assert files.unet_config == svd / "unet" / "config.json"
    assert files.image_encoder_config == svd / "image_encoder" / "config.json"
    assert files.vae_config == BUILTIN_SVD_CONFIGS / "vae" / "config.json"  # the VAE config comes from the shapes
    keys = read_state_dict(files.svd_checkpoint, what="SVD single file")
    assert "first_stage_model.decoder.conv_out.time_mix_conv.weight" in keys
    assert "conditioner.embedders.0.open_clip.model.visual.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert not any(k.startswith(("vae.", "encoder.", "decoder.", "vision_model.")) for k in keys)
