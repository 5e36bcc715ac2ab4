"""Read the VAE and the CLIP image encoder out of an original-layout SVD checkpoint (SPEC 9.1).

ComfyUI users keep Stability's single-file `svd_xt.safetensors` / `svd_xt_1_1.safetensors`
(the "SGM" layout of Stability's generative-models code). diffusers cannot load it for SVD, so
this module maps its keys to the diffusers `AutoencoderKLTemporalDecoder` and the transformers
`CLIPVisionModelWithProjection` names, reshaping where the layouts differ.

What is read (prefixes of the single file):

* `first_stage_model.decoder.*`: the temporal video decoder. Each decoder resnet holds its
  spatial half under the plain LDM names, a temporal half under `time_stack.*` (in_layers /
  out_layers) and the blend logit `mix_factor`; `conv_out.time_mix_conv` is the final
  temporal convolution.
* The VAE encoder, from one of two places:
  - `conditioner.embedders.3.encoder.{encoder,quant_conv}.*`, the image-conditioning encoder of
    SVD (an `AutoencoderKL` with its quant_conv). diffusers' SVD-xt `vae/` folder, which the
    official Sonic uses, was converted from this copy, so it is preferred when present;
  - otherwise `first_stage_model.encoder.*` with `first_stage_model.quant_conv.*` when present.
    SGM's video autoencoder has no quant_conv: its latent is the encoder output itself, which
    is an identity 1x1 quant_conv in diffusers terms, and that is what we produce.
* `conditioner.embedders.0.open_clip.model.visual.*`: the OpenCLIP ViT-H/14 image tower.

Ignored: `model.diffusion_model.*` (Sonic's unet.pth replaces the whole UNet), the OpenCLIP text
leftovers outside `.visual.`, the unused decoder half of the conditioning autoencoder
(`conditioner.embedders.3.encoder.{decoder,post_quant_conv}.*`) and any other prefix.

Strict: every key under the three read prefixes must be understood, and every parameter of the
target models must be produced with the right shape, else a `WeightsError` lists the first
offending keys. Dimensions are read from the tensors (or from the configs when given), so tiny
test checkpoints go through the same code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from ..errors import WeightsError
from ..models.image_models import clip_vision_values
from .svd_single_file_config import SHOWN_KEYS, SINGLE_FILE_HINT, infer_clip_config, infer_vae_config

VAE_PREFIX = "first_stage_model."
COND_ENCODER_PREFIX = "conditioner.embedders.3.encoder."
CLIP_PREFIX = "conditioner.embedders.0.open_clip.model.visual."
READ_PREFIXES = (VAE_PREFIX, COND_ENCODER_PREFIX, CLIP_PREFIX)


Transform = Callable[[torch.Tensor], torch.Tensor]


def is_needed_key(key: str) -> bool:
    """True for keys this module reads: lets a loader skip the multi-GB UNet when reading the file."""
    return key.startswith(READ_PREFIXES)


def _listing(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    more = f" ... ({len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


# --- transforms -----------------------------------------------------------------------------

def _copy(t: torch.Tensor) -> torch.Tensor:
    return t


def _conv1x1_to_linear(t: torch.Tensor) -> torch.Tensor:
    # LDM attention uses 1x1 convolutions (C, C, 1, 1); diffusers uses Linear (C, C).
    return t.reshape(t.shape[0], t.shape[1]) if t.dim() == 4 else t


def _transpose(t: torch.Tensor) -> torch.Tensor:
    # OpenCLIP applies `x @ proj` (width, out); nn.Linear stores (out, width).
    return t.t().contiguous()


def _qkv_part(index: int) -> Transform:
    # OpenCLIP fuses q, k, v into one in_proj of 3 x width rows, in that order.
    return lambda t: t.chunk(3, dim=0)[index].contiguous()


# --- key rules ------------------------------------------------------------------------------

_RESNET_SPATIAL = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
                   "nin_shortcut": "conv_shortcut"}
_RESNET_TEMPORAL = {"in_layers.0": "norm1", "in_layers.2": "conv1", "out_layers.0": "norm2", "out_layers.3": "conv2"}
_ATTENTION = {"norm": ("group_norm", _copy), "q": ("to_q", _conv1x1_to_linear), "k": ("to_k", _conv1x1_to_linear),
              "v": ("to_v", _conv1x1_to_linear), "proj_out": ("to_out.0", _conv1x1_to_linear)}
_PARAM = r"(?P<param>weight|bias)"


def _map_encoder_key(key: str) -> list[tuple[str, Transform]] | None:
    """LDM encoder key (after the model prefix) -> [(diffusers key, transform)], None if unknown."""
    if m := re.fullmatch(rf"encoder\.(?P<name>conv_in|conv_out)\.{_PARAM}", key):
        return [(f"encoder.{m['name']}.{m['param']}", _copy)]
    if m := re.fullmatch(rf"encoder\.norm_out\.{_PARAM}", key):
        return [(f"encoder.conv_norm_out.{m['param']}", _copy)]
    if m := re.fullmatch(rf"encoder\.down\.(?P<i>\d+)\.block\.(?P<j>\d+)\.(?P<layer>\w+)\.{_PARAM}", key):
        if m["layer"] in _RESNET_SPATIAL:
            return [(f"encoder.down_blocks.{m['i']}.resnets.{m['j']}.{_RESNET_SPATIAL[m['layer']]}.{m['param']}", _copy)]
        return None
    if m := re.fullmatch(rf"encoder\.down\.(?P<i>\d+)\.downsample\.conv\.{_PARAM}", key):
        return [(f"encoder.down_blocks.{m['i']}.downsamplers.0.conv.{m['param']}", _copy)]
    if m := re.fullmatch(rf"encoder\.mid\.block_(?P<k>[12])\.(?P<layer>\w+)\.{_PARAM}", key):
        if m["layer"] in _RESNET_SPATIAL:
            index = int(m["k"]) - 1
            return [(f"encoder.mid_block.resnets.{index}.{_RESNET_SPATIAL[m['layer']]}.{m['param']}", _copy)]
        return None
    if m := re.fullmatch(rf"encoder\.mid\.attn_1\.(?P<layer>\w+)\.{_PARAM}", key):
        if m["layer"] in _ATTENTION:
            name, transform = _ATTENTION[m["layer"]]
            return [(f"encoder.mid_block.attentions.0.{name}.{m['param']}", transform)]
        return None
    if m := re.fullmatch(rf"quant_conv\.{_PARAM}", key):
        return [(f"quant_conv.{m['param']}", _copy)]
    return None


def _map_resnet_tail(tail: str, target: str) -> list[tuple[str, Transform]] | None:
    """Inside one decoder video resnet: spatial / time_stack / mix_factor names."""
    if tail == "mix_factor":
        return [(f"{target}.time_mixer.mix_factor", _copy)]
    if m := re.fullmatch(rf"time_stack\.(?P<layer>(?:in|out)_layers\.\d)\.{_PARAM}", tail):
        if m["layer"] in _RESNET_TEMPORAL:
            return [(f"{target}.temporal_res_block.{_RESNET_TEMPORAL[m['layer']]}.{m['param']}", _copy)]
        return None
    if m := re.fullmatch(rf"(?P<layer>\w+)\.{_PARAM}", tail):
        if m["layer"] in _RESNET_SPATIAL:
            return [(f"{target}.spatial_res_block.{_RESNET_SPATIAL[m['layer']]}.{m['param']}", _copy)]
    return None


def _map_decoder_key(key: str, up_levels: int) -> list[tuple[str, Transform]] | None:
    """SGM video-decoder key (after `first_stage_model.`) -> diffusers temporal-decoder key(s)."""
    if m := re.fullmatch(rf"decoder\.conv_in\.{_PARAM}", key):
        return [(f"decoder.conv_in.{m['param']}", _copy)]
    if m := re.fullmatch(rf"decoder\.norm_out\.{_PARAM}", key):
        return [(f"decoder.conv_norm_out.{m['param']}", _copy)]
    if m := re.fullmatch(rf"decoder\.conv_out\.{_PARAM}", key):
        return [(f"decoder.conv_out.{m['param']}", _copy)]
    if m := re.fullmatch(rf"decoder\.conv_out\.time_mix_conv\.{_PARAM}", key):
        return [(f"decoder.time_conv_out.{m['param']}", _copy)]
    if m := re.fullmatch(r"decoder\.mid\.block_(?P<k>[12])\.(?P<tail>.+)", key):
        return _map_resnet_tail(m["tail"], f"decoder.mid_block.resnets.{int(m['k']) - 1}")
    if m := re.fullmatch(rf"decoder\.mid\.attn_1\.(?P<layer>\w+)\.{_PARAM}", key):
        if m["layer"] in _ATTENTION:
            name, transform = _ATTENTION[m["layer"]]
            return [(f"decoder.mid_block.attentions.0.{name}.{m['param']}", transform)]
        return None
    # LDM numbers decoder levels from the highest resolution; diffusers from the lowest.
    if m := re.fullmatch(r"decoder\.up\.(?P<i>\d+)\.block\.(?P<j>\d+)\.(?P<tail>.+)", key):
        level = up_levels - 1 - int(m["i"])
        return _map_resnet_tail(m["tail"], f"decoder.up_blocks.{level}.resnets.{m['j']}")
    if m := re.fullmatch(rf"decoder\.up\.(?P<i>\d+)\.upsample\.conv\.{_PARAM}", key):
        level = up_levels - 1 - int(m["i"])
        return [(f"decoder.up_blocks.{level}.upsamplers.0.conv.{m['param']}", _copy)]
    return None


_CLIP_LAYER = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
               "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def _map_clip_key(key: str) -> list[tuple[str, Transform]] | None:
    """OpenCLIP visual key (after `...open_clip.model.visual.`) -> transformers CLIP vision key(s)."""
    fixed = {"class_embedding": ("vision_model.embeddings.class_embedding", _copy),
             "positional_embedding": ("vision_model.embeddings.position_embedding.weight", _copy),
             "conv1.weight": ("vision_model.embeddings.patch_embedding.weight", _copy),
             "ln_pre.weight": ("vision_model.pre_layrnorm.weight", _copy),
             "ln_pre.bias": ("vision_model.pre_layrnorm.bias", _copy),
             "ln_post.weight": ("vision_model.post_layernorm.weight", _copy),
             "ln_post.bias": ("vision_model.post_layernorm.bias", _copy),
             "proj": ("visual_projection.weight", _transpose)}
    if key in fixed:
        return [fixed[key]]
    m = re.fullmatch(r"transformer\.resblocks\.(?P<i>\d+)\.(?P<tail>.+)", key)
    if m is None:
        return None
    layer = f"vision_model.encoder.layers.{m['i']}"
    if pm := re.fullmatch(r"attn\.in_proj_(?P<param>weight|bias)", m["tail"]):
        return [(f"{layer}.self_attn.{name}_proj.{pm['param']}", _qkv_part(index))
                for index, name in enumerate(("q", "k", "v"))]
    if pm := re.fullmatch(rf"(?P<layer>[\w.]+)\.{_PARAM}", m["tail"]):
        if pm["layer"] in _CLIP_LAYER:
            return [(f"{layer}.{_CLIP_LAYER[pm['layer']]}.{pm['param']}", _copy)]
    return None


# --- applying the rules ---------------------------------------------------------------------

def _convert(state_dict: Mapping[str, torch.Tensor], keys: list[str], prefix: str,
             rule: Callable[[str], list[tuple[str, Transform]] | None], what: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key in keys:
        targets = rule(key[len(prefix):])
        if targets is None:
            unknown.append(key)
            continue
        tensor = state_dict[key]  # read only what is used (lazy mappings stay cheap)
        for target, transform in targets:
            if target in out:
                raise WeightsError(f"{what}: two checkpoint keys map to '{target}' (the last one is {key}); {SINGLE_FILE_HINT}")
            out[target] = transform(tensor)
    if unknown:
        raise WeightsError(f"{what}: {len(unknown)} key(s) of the SVD checkpoint are not understood: "
                           f"{_listing(unknown)}; this is not an SVD(-xt) checkpoint in the original layout, "
                           f"or a variant we do not support; {SINGLE_FILE_HINT}")
    return out


def _under(keys: Iterable[str], prefix: str) -> list[str]:
    return [k for k in keys if k.startswith(prefix)]


def _split_vae(state_dict: Mapping[str, torch.Tensor], keys: list[str]) -> dict[str, torch.Tensor]:
    vae_keys = _under(keys, VAE_PREFIX)
    if not vae_keys:
        raise WeightsError(f"the SVD checkpoint has no VAE (no '{VAE_PREFIX}*' keys); {SINGLE_FILE_HINT}")
    decoder_keys = [k for k in vae_keys if k.startswith(VAE_PREFIX + "decoder.")]
    other_keys = [k for k in vae_keys if not k.startswith(VAE_PREFIX + "decoder.")]
    up_levels = len({re.match(r"decoder\.up\.(\d+)\.", k[len(VAE_PREFIX):]).group(1)
                     for k in decoder_keys if re.match(r"decoder\.up\.\d+\.", k[len(VAE_PREFIX):])})
    decoder = _convert(state_dict, decoder_keys, VAE_PREFIX, lambda k: _map_decoder_key(k, up_levels), "SVD VAE decoder")
    if not any(k.endswith("time_conv_out.weight") for k in decoder):
        raise WeightsError(f"the VAE of this checkpoint has no temporal decoder (no 'decoder.conv_out.time_mix_conv' "
                           f"key): it is an image VAE, not SVD's video VAE; {SINGLE_FILE_HINT}")
    first_stage_encoder = _convert(state_dict, other_keys, VAE_PREFIX, _map_encoder_key, "SVD VAE encoder")

    cond_keys = _under(keys, COND_ENCODER_PREFIX)
    unused_half = (COND_ENCODER_PREFIX + "decoder.", COND_ENCODER_PREFIX + "post_quant_conv.")
    cond_keys = [k for k in cond_keys if not k.startswith(unused_half)]
    cond_encoder = _convert(state_dict, cond_keys, COND_ENCODER_PREFIX, _map_encoder_key, "SVD conditioning encoder")

    encoder = cond_encoder if cond_encoder else first_stage_encoder
    if encoder and "quant_conv.weight" not in encoder and not cond_encoder:
        # SGM's video autoencoder has no quant_conv: identity in diffusers' terms.
        channels = encoder.get("encoder.conv_out.weight")
        if channels is not None:
            identity = torch.eye(channels.shape[0], dtype=channels.dtype)
            encoder["quant_conv.weight"] = identity[:, :, None, None]
            encoder["quant_conv.bias"] = torch.zeros(channels.shape[0], dtype=channels.dtype)
    return {**encoder, **decoder}


def _split_clip(state_dict: Mapping[str, torch.Tensor], keys: list[str]) -> dict[str, torch.Tensor]:
    clip_keys = _under(keys, CLIP_PREFIX)
    if not clip_keys:
        raise WeightsError(f"the checkpoint has no CLIP image encoder (no '{CLIP_PREFIX}*' keys): it is not an SVD "
                           f"image-to-video checkpoint; {SINGLE_FILE_HINT}")
    return _convert(state_dict, clip_keys, CLIP_PREFIX, _map_clip_key, "SVD CLIP image encoder")


# --- target checking ------------------------------------------------------------------------

def _check_against(produced: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], what: str) -> None:
    missing = set(expected) - set(produced)
    extra = set(produced) - set(expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_listing(missing)}")
        if extra:
            parts.append(f"{len(extra)} not expected: {_listing(extra)}")
        raise WeightsError(f"{what} weights from the SVD checkpoint do not match the model ({'; '.join(parts)}); {SINGLE_FILE_HINT}")
    wrong = [f"{k} {tuple(produced[k].shape)} != {tuple(expected[k].shape)}" for k in sorted(expected)
             if tuple(produced[k].shape) != tuple(expected[k].shape)]
    if wrong:
        raise WeightsError(f"{what} weights from the SVD checkpoint have wrong shapes ({len(wrong)}): "
                           f"{', '.join(wrong[:SHOWN_KEYS])}; {SINGLE_FILE_HINT}")


def _expected_state(build: Callable[[], torch.nn.Module]) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return build().state_dict()


def split_svd_single_file(state_dict: Mapping[str, torch.Tensor], *, vae_config: Mapping[str, Any] | None = None,
                          clip_config: Mapping[str, Any] | None = None
                          ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split an original-layout SVD checkpoint into (VAE, CLIP image encoder) state dicts.

    Args:
        state_dict: the checkpoint's tensors (a dict, or any mapping that loads values lazily;
            only the keys selected by `is_needed_key` are read).
        vae_config: diffusers `AutoencoderKLTemporalDecoder` config to check against; None: read
            from the tensor shapes (`infer_vae_config`).
        clip_config: `CLIPVisionConfig` dict to check against; None: read from the shapes.

    Returns:
        (vae_state_dict in diffusers names, clip_state_dict in transformers names), tensors in the
        checkpoint's dtype, ready for `build_vae` / `build_clip_image_encoder`.

    Raises:
        WeightsError: unknown keys under the read prefixes, or missing / wrongly shaped targets.
    """
    from diffusers import AutoencoderKLTemporalDecoder
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    keys = [k for k in state_dict.keys() if is_needed_key(k)]
    vae = _split_vae(state_dict, keys)
    clip = _split_clip(state_dict, keys)

    vae_values = dict(vae_config) if vae_config is not None else infer_vae_config(vae)
    expected_vae = _expected_state(lambda: AutoencoderKLTemporalDecoder.from_config(vae_values))
    _check_against(vae, expected_vae, "SVD VAE")

    clip_values = clip_vision_values(clip_config) if clip_config is not None else infer_clip_config(clip)
    expected_clip = _expected_state(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig.from_dict(clip_values)))
    _check_against(clip, expected_clip, "SVD CLIP image encoder")
    return vae, clip
