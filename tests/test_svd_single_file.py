"""Original-layout SVD checkpoint -> diffusers VAE + transformers CLIP (sonic.weights.svd_single_file).

The inverse mapping (`to_single_file_layout`: diffusers/transformers names -> Stability's SGM names,
with OpenCLIP's fused q/k/v and transposed projection) builds a tiny original-layout checkpoint from
random tiny models; `split_svd_single_file` must give the models back bit-exactly, and the spot
checks below pin real svd_xt.safetensors key names so the two directions cannot drift together.
"""

from __future__ import annotations

import json

import pytest
import torch

from helpers import SVD_CONFIGS
from sonic.errors import WeightsError
from sonic.weights import BUILTIN_SVD_CONFIGS
from sonic.models.image_models import build_clip_image_encoder, build_vae, clip_image_embeds, encode_reference
from sonic.weights.svd_single_file import is_needed_key, split_svd_single_file
from sonic.weights.svd_single_file_config import single_file_configs
from sonic.weights.svd_single_file_export import to_single_file_layout

TINY_VAE = {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 2,
            "block_out_channels": [32, 64], "layers_per_block": 1, "latent_channels": 4}
TINY_CLIP = {"model_type": "clip_vision_model", "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
             "num_attention_heads": 2, "patch_size": 14, "image_size": 56, "projection_dim": 12, "hidden_act": "gelu"}
VIT_H = {"model_type": "clip_vision_model", "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
         "num_attention_heads": 16, "patch_size": 14, "image_size": 224, "projection_dim": 1024,
         "layer_norm_eps": 1e-5, "hidden_act": "gelu"}

FIRST_STAGE = "first_stage_model."
COND_ENCODER = "conditioner.embedders.3.encoder."
VISUAL = "conditioner.embedders.0.open_clip.model.visual."


# --- fixtures ------------------------------------------------------------------------------

def _randomised(model: torch.nn.Module, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.2 for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(2)
    vae = _randomised(build_vae(TINY_VAE), 1)
    clip = _randomised(build_clip_image_encoder(TINY_CLIP), 2)
    extras = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2),  # UNet: ignored
              "conditioner.embedders.0.open_clip.model.token_embedding.weight": torch.zeros(3, 2),  # text leftovers
              COND_ENCODER + "post_quant_conv.weight": torch.zeros(4, 4, 1, 1),  # unused half of the cond. VAE
              COND_ENCODER + "decoder.conv_in.weight": torch.zeros(8, 4, 3, 3),
              "alphas_cumprod": torch.zeros(3)}
    return {"vae": vae, "clip": clip, "extras": extras}


def _checkpoint(tiny, **kwargs) -> dict:
    return {**to_single_file_layout(tiny["vae"], tiny["clip"], **kwargs), **tiny["extras"]}


def _assert_same(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key


# --- tests ---------------------------------------------------------------------------------

def test_round_trip_is_bit_exact(tiny):
    checkpoint = _checkpoint(tiny)
    # A first-stage encoder copy with other values: the conditioning copy (diffusers' source) must win.
    for key, value in list(checkpoint.items()):
        if key.startswith(COND_ENCODER + "encoder."):
            checkpoint[FIRST_STAGE + key[len(COND_ENCODER):]] = value + 1
    vae, clip = split_svd_single_file(checkpoint)
    _assert_same(vae, tiny["vae"])
    _assert_same(clip, tiny["clip"])
    # Same answer when checked against explicit configs, and the results load and run.
    vae2, clip2 = split_svd_single_file(checkpoint, vae_config=TINY_VAE, clip_config=TINY_CLIP)
    _assert_same(vae2, tiny["vae"])
    encoder = build_clip_image_encoder(TINY_CLIP, clip2)
    assert clip_image_embeds(encoder, torch.rand(1, 3, 56, 56)).shape == (1, 12)


def test_first_stage_encoder_without_quant_conv_gets_identity(tiny):
    checkpoint = _checkpoint(tiny, encoder_place="first_stage")
    assert not any(k.startswith(COND_ENCODER + "encoder.") for k in checkpoint)
    vae, _ = split_svd_single_file(checkpoint)
    expected = dict(tiny["vae"])
    expected["quant_conv.weight"] = torch.eye(8)[:, :, None, None]
    expected["quant_conv.bias"] = torch.zeros(8)
    _assert_same(vae, expected)
    # An identity quant_conv leaves the encoder's moments untouched: the latent is the encoder output.
    model = build_vae(TINY_VAE, vae)
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    _, latent = encode_reference(model, pixels)
    assert torch.allclose(latent, model.encoder(pixels)[:, :4], atol=1e-6)


def test_missing_key_is_named(tiny):
    checkpoint = _checkpoint(tiny)
    del checkpoint[FIRST_STAGE + "decoder.up.0.block.1.time_stack.out_layers.3.bias"]
    with pytest.raises(WeightsError, match=r"missing: decoder\.up_blocks\.1\.resnets\.1\.temporal_res_block\.conv2\.bias"):
        split_svd_single_file(checkpoint)
    checkpoint = _checkpoint(tiny)
    del checkpoint[VISUAL + "transformer.resblocks.1.attn.in_proj_bias"]
    with pytest.raises(WeightsError, match=r"layers\.1\.self_attn\.k_proj\.bias"):
        split_svd_single_file(checkpoint, clip_config=TINY_CLIP)


def test_extra_key_is_named(tiny):
    checkpoint = _checkpoint(tiny)
    checkpoint[VISUAL + "transformer.resblocks.0.ls_1.gamma"] = torch.ones(16)
    with pytest.raises(WeightsError, match=r"not understood: .*resblocks\.0\.ls_1\.gamma"):
        split_svd_single_file(checkpoint)
    checkpoint = _checkpoint(tiny)
    checkpoint[FIRST_STAGE + "decoder.up.1.block.2.mix_factor"] = torch.zeros(1)  # a resnet the config lacks
    with pytest.raises(WeightsError, match=r"not expected: decoder\.up_blocks\.0\.resnets\.2\.time_mixer"):
        split_svd_single_file(checkpoint, vae_config=TINY_VAE)


def test_wrong_files_are_clear_errors(tiny):
    checkpoint = _checkpoint(tiny)
    checkpoint[VISUAL + "proj"] = torch.zeros(16, 10)
    with pytest.raises(WeightsError, match=r"wrong shapes .*visual_projection\.weight \(10, 16\) != \(12, 16\)"):
        split_svd_single_file(checkpoint, clip_config=TINY_CLIP)
    no_clip = {k: v for k, v in _checkpoint(tiny).items() if not k.startswith(VISUAL)}
    with pytest.raises(WeightsError, match="no CLIP image encoder"):
        split_svd_single_file(no_clip)
    image_vae = {k: v for k, v in _checkpoint(tiny).items() if "time_mix_conv" not in k}
    with pytest.raises(WeightsError, match="no temporal decoder"):
        split_svd_single_file(image_vae)
    with pytest.raises(WeightsError, match="no VAE"):
        split_svd_single_file({"model.diffusion_model.out.2.weight": torch.zeros(1)})


def test_only_needed_keys_are_read(tiny):
    class Recording(dict):
        read: list

        def __getitem__(self, key):
            self.read.append(key)
            return super().__getitem__(key)

    checkpoint = Recording(_checkpoint(tiny))
    checkpoint.read = []
    split_svd_single_file(checkpoint)
    assert checkpoint.read and all(is_needed_key(k) for k in checkpoint.read)
    assert not any(k.startswith(("model.diffusion_model.", COND_ENCODER + "decoder.")) for k in checkpoint.read)


def test_full_size_key_names_map_one_to_one():
    vae_config = json.loads((SVD_CONFIGS / "vae" / "config.json").read_text())
    with torch.device("meta"):
        vae = build_vae(vae_config).state_dict()
        clip = build_clip_image_encoder(VIT_H).state_dict()
    checkpoint = to_single_file_layout(vae, clip)
    # Spot checks of real single-file names (Stability's generative-models / svd_xt.safetensors).
    for name in ("first_stage_model.decoder.up.3.block.2.time_stack.in_layers.2.weight",
                 "first_stage_model.decoder.mid.block_2.mix_factor",
                 "first_stage_model.decoder.conv_out.time_mix_conv.weight",
                 "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight",
                 "conditioner.embedders.3.encoder.encoder.mid.attn_1.proj_out.weight",
                 "conditioner.embedders.3.encoder.quant_conv.weight",
                 VISUAL + "transformer.resblocks.31.attn.in_proj_weight", VISUAL + "proj"):
        assert name in checkpoint, name
    assert tuple(checkpoint[VISUAL + "proj"].shape) == (1280, 1024)
    assert tuple(checkpoint[VISUAL + "transformer.resblocks.0.attn.in_proj_weight"].shape) == (3840, 1280)
    for config in ((vae_config, VIT_H), (None, None)):
        got_vae, got_clip = split_svd_single_file(checkpoint, vae_config=config[0], clip_config=config[1])
        assert {k: tuple(v.shape) for k, v in got_vae.items()} == {k: tuple(v.shape) for k, v in vae.items()}
        assert {k: tuple(v.shape) for k, v in got_clip.items()} == {k: tuple(v.shape) for k, v in clip.items()}


def _meta_states(vae_config: dict, clip_config: dict) -> tuple[dict, dict]:
    with torch.device("meta"):
        return build_vae(vae_config).state_dict(), build_clip_image_encoder(clip_config).state_dict()


def test_configs_follow_the_file_shapes_and_agree_with_svd_xt():
    builtin_vae = json.loads((SVD_CONFIGS / "vae" / "config.json").read_text())
    builtin_clip = json.loads((BUILTIN_SVD_CONFIGS / "image_encoder" / "config.json").read_text())
    refs = dict(vae_reference=builtin_vae, clip_reference=builtin_clip)
    # Full size: the built-in configs come back unchanged (16 heads, which no shape records).
    vae_config, clip_config = single_file_configs(*_meta_states(builtin_vae, VIT_H), **refs)
    assert vae_config == builtin_vae
    assert clip_config["num_attention_heads"] == 16 and clip_config["hidden_size"] == 1280
    # Full width but one layer short: a damaged or different file, named field by field.
    with pytest.raises(WeightsError, match=r"CLIP image encoder .* shapes of SVD-xt's configuration: "
                                           r"num_hidden_layers 31 \(config: 32\)"):
        single_file_configs(*_meta_states(builtin_vae, {**VIT_H, "num_hidden_layers": 31}), **refs)
    # A reduced (test-size) file: shapes from the tensors, the rest from SVD-xt's configs.
    vae_config, clip_config = single_file_configs(*_meta_states(TINY_VAE, {**TINY_CLIP, "hidden_size": 160}), **refs)
    assert vae_config["block_out_channels"] == [32, 64] and vae_config["scaling_factor"] == 0.18215
    assert clip_config["num_attention_heads"] == 2 and clip_config["hidden_act"] == "gelu"  # ViT-H's 80-wide heads
    with pytest.raises(WeightsError, match="attention-head count cannot be read"):
        single_file_configs(*_meta_states(TINY_VAE, TINY_CLIP), **refs)
    # A config of the user's own (an SVD folder) gives the heads, and must match the shapes.
    _, clip_config = single_file_configs(*_meta_states(TINY_VAE, TINY_CLIP), vae_reference=builtin_vae,
                                         clip_reference=TINY_CLIP, clip_reference_is_builtin=False)
    assert clip_config["num_attention_heads"] == 2 and clip_config["hidden_size"] == 16
    with pytest.raises(WeightsError, match=r"SVD folder's config.json: hidden_size 16 \(config: 32\)"):
        single_file_configs(*_meta_states(TINY_VAE, TINY_CLIP), vae_reference=builtin_vae,
                            clip_reference={**TINY_CLIP, "hidden_size": 32}, clip_reference_is_builtin=False)
