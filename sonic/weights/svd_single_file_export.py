"""Write an original-layout SVD single file from diffusers/transformers state dicts: the inverse of
`svd_single_file`'s mapping, used to build test-size checkpoints."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ..errors import WeightsError
from .svd_single_file import (_CLIP_LAYER, _RESNET_SPATIAL, _RESNET_TEMPORAL, CLIP_PREFIX, COND_ENCODER_PREFIX,
                              VAE_PREFIX)

_TO_SGM_RESNET = {new: old for old, new in _RESNET_SPATIAL.items()}
_TO_SGM_TEMPORAL = {new: old for old, new in _RESNET_TEMPORAL.items()}
_TO_SGM_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
_TO_SGM_CLIP_LAYER = {new: old for old, new in _CLIP_LAYER.items()}
_TO_SGM_CLIP_FIXED = {"vision_model.embeddings.class_embedding": "class_embedding",
                      "vision_model.embeddings.position_embedding.weight": "positional_embedding",
                      "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
                      "vision_model.pre_layrnorm.weight": "ln_pre.weight",
                      "vision_model.pre_layrnorm.bias": "ln_pre.bias",
                      "vision_model.post_layernorm.weight": "ln_post.weight",
                      "vision_model.post_layernorm.bias": "ln_post.bias"}


def _sgm_resnet(head: str, rest: list[str]) -> str:
    """A decoder video-resnet key tail (diffusers) under the SGM resnet name `head`."""
    if rest[0] == "time_mixer":
        return f"{head}.mix_factor"
    if rest[0] == "spatial_res_block":
        return f"{head}.{_TO_SGM_RESNET[rest[1]]}.{rest[2]}"
    return f"{head}.time_stack.{_TO_SGM_TEMPORAL[rest[1]]}.{rest[2]}"


def _sgm_vae_key(key: str, levels: int) -> str:
    """diffusers `AutoencoderKLTemporalDecoder` key -> SGM key (without the model prefix)."""
    parts = key.split(".")
    side = parts[0]
    if ".mid_block.attentions.0." in key:
        return f"{side}.mid.attn_1.{_TO_SGM_ATTENTION[parts[4]]}.{parts[-1]}"
    if key.startswith("encoder.down_blocks."):
        if parts[3] == "downsamplers":
            return f"encoder.down.{parts[2]}.downsample.conv.{parts[-1]}"
        return f"encoder.down.{parts[2]}.block.{parts[4]}.{_TO_SGM_RESNET[parts[5]]}.{parts[6]}"
    if key.startswith("encoder.mid_block.resnets."):
        return f"encoder.mid.block_{int(parts[3]) + 1}.{_TO_SGM_RESNET[parts[4]]}.{parts[5]}"
    if key.startswith("decoder.mid_block.resnets."):
        return _sgm_resnet(f"decoder.mid.block_{int(parts[3]) + 1}", parts[4:])
    if key.startswith("decoder.up_blocks."):
        level = levels - 1 - int(parts[2])  # SGM counts decoder levels from the highest resolution
        if parts[3] == "upsamplers":
            return f"decoder.up.{level}.upsample.conv.{parts[-1]}"
        return _sgm_resnet(f"decoder.up.{level}.block.{parts[4]}", parts[5:])
    renames = {"conv_norm_out": "norm_out", "time_conv_out": "conv_out.time_mix_conv"}
    if side in ("encoder", "decoder"):
        return ".".join([side, renames.get(parts[1], parts[1]), *parts[2:]])
    return key  # quant_conv.*


def _sgm_clip(clip_state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIP vision keys -> OpenCLIP visual keys (q/k/v fused, projection transposed)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in clip_state_dict.items():
        if key == "visual_projection.weight":
            out[CLIP_PREFIX + "proj"] = value.t().contiguous()
        elif key in _TO_SGM_CLIP_FIXED:
            out[CLIP_PREFIX + _TO_SGM_CLIP_FIXED[key]] = value
        elif m := re.fullmatch(r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            qkv.setdefault((m[1], m[3]), {})[m[2]] = value
        elif m := re.fullmatch(r"vision_model\.encoder\.layers\.(\d+)\.([\w.]+)\.(weight|bias)", key):
            out[f"{CLIP_PREFIX}transformer.resblocks.{m[1]}.{_TO_SGM_CLIP_LAYER[m[2]]}.{m[3]}"] = value
        else:
            raise WeightsError(f"CLIP image encoder key {key!r} has no place in the original SVD layout")
    for (layer, param), parts in qkv.items():
        out[f"{CLIP_PREFIX}transformer.resblocks.{layer}.attn.in_proj_{param}"] = \
            torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def to_single_file_layout(vae_state_dict: Mapping[str, torch.Tensor], clip_state_dict: Mapping[str, torch.Tensor],
                          *, encoder_place: str = "conditioner") -> dict[str, torch.Tensor]:
    """The inverse of `split_svd_single_file`: diffusers VAE + transformers CLIP -> original layout.

    Used to write test-size `svd_xt.safetensors` files. `encoder_place` "conditioner" puts the
    VAE encoder (with its quant_conv) under `conditioner.embedders.3.encoder.` as in SVD-xt;
    "first_stage" puts it under `first_stage_model.` without quant_conv, as SGM's video
    autoencoder has none (only right when the quant_conv is the identity).
    """
    if encoder_place not in ("conditioner", "first_stage"):
        raise ValueError(f"encoder_place must be 'conditioner' or 'first_stage', got {encoder_place!r}")
    levels = len({k.split(".")[2] for k in vae_state_dict if k.startswith("decoder.up_blocks.")})
    out: dict[str, torch.Tensor] = {}
    for key, value in vae_state_dict.items():
        name = _sgm_vae_key(key, levels)
        if re.search(r"attn_1\.(q|k|v|proj_out)\.weight$", name):
            value = value.reshape(*value.shape, 1, 1)  # LDM attention: 1x1 convolutions
        if key.startswith("decoder."):
            out[VAE_PREFIX + name] = value
        elif encoder_place == "conditioner":
            out[COND_ENCODER_PREFIX + name] = value
        elif not key.startswith("quant_conv."):
            out[VAE_PREFIX + name] = value
    out.update(_sgm_clip(clip_state_dict))
    return out
