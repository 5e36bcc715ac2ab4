"""Original-layout SVD checkpoint -> diffusers VAE + transformers CLIP (sonic.svd_single_file).

The test writes the INVERSE mapping itself (diffusers/transformers names -> Stability's SGM names,
with OpenCLIP's fused q/k/v and transposed projection), builds a tiny original-layout checkpoint
from random tiny models, and checks that `split_svd_single_file` gives the models back bit-exactly.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import SVD_CONFIGS
from sonic.errors import WeightsError
from sonic.models.image_models import build_clip_image_encoder, build_vae, clip_image_embeds, encode_reference
from sonic.svd_single_file import is_needed_key, split_svd_single_file

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


# --- the inverse mapping (diffusers / transformers -> SGM / OpenCLIP) ------------------------

def _sgm_resnet_layer(name: str) -> str:
    return {"conv_shortcut": "nin_shortcut"}.get(name, name)


def _sgm_vae_name(key: str, levels: int) -> str:
    """diffusers AutoencoderKLTemporalDecoder key -> SGM key (without the model prefix)."""
    parts = key.split(".")
    if key.startswith("encoder.down_blocks."):
        i, kind, j = parts[2], parts[3], parts[4]
        if kind == "downsamplers":
            return f"encoder.down.{i}.downsample.conv.{parts[-1]}"
        return f"encoder.down.{i}.block.{j}.{_sgm_resnet_layer(parts[5])}.{parts[6]}"
    if ".mid_block.attentions.0." in key:
        side = parts[0]
        name = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}[parts[4]]
        return f"{side}.mid.attn_1.{name}.{parts[-1]}"
    if key.startswith("encoder.mid_block.resnets."):
        return f"encoder.mid.block_{int(parts[3]) + 1}.{_sgm_resnet_layer(parts[4])}.{parts[5]}"
    if key.startswith(("decoder.mid_block.resnets.", "decoder.up_blocks.")) and ".upsamplers." not in key:
        if key.startswith("decoder.mid_block."):
            head, rest = f"decoder.mid.block_{int(parts[3]) + 1}", parts[4:]
        else:
            head, rest = f"decoder.up.{levels - 1 - int(parts[2])}.block.{parts[4]}", parts[5:]
        if rest[0] == "time_mixer":
            return f"{head}.mix_factor"
        if rest[0] == "spatial_res_block":
            return f"{head}.{_sgm_resnet_layer(rest[1])}.{rest[2]}"
        temporal = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3"}
        return f"{head}.time_stack.{temporal[rest[1]]}.{rest[2]}"
    if ".upsamplers." in key:
        return f"decoder.up.{levels - 1 - int(parts[2])}.upsample.conv.{parts[-1]}"
    renames = {"conv_norm_out": "norm_out", "time_conv_out": "conv_out.time_mix_conv"}
    return ".".join([parts[0], renames.get(parts[1], parts[1])] + parts[2:]) if parts[0] in ("encoder", "decoder") \
        else key


def to_sgm_checkpoint(vae_sd: dict, clip_sd: dict, levels: int, *, encoder_place: str = "conditioner") -> dict:
    """A checkpoint in Stability's single-file layout, from diffusers/transformers state dicts."""
    out = {}
    for key, value in vae_sd.items():
        name = _sgm_vae_name(key, levels)
        if re.search(r"attn_1\.(q|k|v|proj_out)\.weight$", name):
            value = value.reshape(*value.shape, 1, 1)  # LDM attention: 1x1 convolutions
        if key.startswith("decoder."):
            out[FIRST_STAGE + name] = value
        elif encoder_place == "conditioner":
            out[COND_ENCODER + name] = value
        elif not key.startswith("quant_conv."):  # SGM's video autoencoder has no quant_conv
            out[FIRST_STAGE + name] = value
    per_layer = {}
    for key, value in clip_sd.items():
        if key == "visual_projection.weight":
            out[VISUAL + "proj"] = value.t().contiguous()
            continue
        if m := re.fullmatch(r"vision_model\.encoder\.layers\.(\d+)\.(.+)", key):
            i, tail = m.groups()
            if qkv := re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", tail):
                per_layer.setdefault((i, qkv[2]), {})[qkv[1]] = value
                continue
            tail = (tail.replace("layer_norm1", "ln_1").replace("layer_norm2", "ln_2")
                    .replace("self_attn.out_proj", "attn.out_proj").replace("mlp.fc1", "mlp.c_fc")
                    .replace("mlp.fc2", "mlp.c_proj"))
            out[f"{VISUAL}transformer.resblocks.{i}.{tail}"] = value
            continue
        name = {"vision_model.embeddings.class_embedding": "class_embedding",
                "vision_model.embeddings.position_embedding.weight": "positional_embedding",
                "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
                "vision_model.pre_layrnorm.weight": "ln_pre.weight", "vision_model.pre_layrnorm.bias": "ln_pre.bias",
                "vision_model.post_layernorm.weight": "ln_post.weight",
                "vision_model.post_layernorm.bias": "ln_post.bias"}[key]
        out[VISUAL + name] = value
    for (i, param), parts in per_layer.items():
        out[f"{VISUAL}transformer.resblocks.{i}.attn.in_proj_{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


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
    return {**to_sgm_checkpoint(tiny["vae"], tiny["clip"], len(TINY_VAE["block_out_channels"]), **kwargs),
            **tiny["extras"]}


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
    checkpoint = to_sgm_checkpoint(vae, clip, len(vae_config["block_out_channels"]))
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
