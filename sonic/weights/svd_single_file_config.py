"""Configs of the models in an original-layout SVD single file: the shapes come from its tensors,
what no tensor records (attention heads, norm epsilon, activation) from a reference config."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ..errors import WeightsError
from ..models.image_models import clip_vision_values

SHOWN_KEYS = 8  # keys listed in an error message
SINGLE_FILE_HINT = ("use Stability's svd_xt.safetensors / svd_xt_1_1.safetensors unchanged, or the diffusers folder "
                    "stabilityai/stable-video-diffusion-img2vid-xt (vae/ and image_encoder/)")


def _shape(state: Mapping[str, torch.Tensor], key: str, what: str) -> tuple[int, ...]:
    if key not in state:
        raise WeightsError(f"{what}: the checkpoint lacks the weights for '{key}'; {SINGLE_FILE_HINT}")
    return tuple(state[key].shape)


def infer_vae_config(vae_state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """A diffusers `AutoencoderKLTemporalDecoder` config read from converted weights' shapes."""
    what = "SVD VAE"
    levels = sorted({int(m.group(1)) for k in vae_state_dict if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))})
    if not levels:
        raise WeightsError(f"{what}: the checkpoint has no encoder blocks; {SINGLE_FILE_HINT}")
    layers = len({k.split(".")[4] for k in vae_state_dict if k.startswith("encoder.down_blocks.0.resnets.")})
    return {
        "in_channels": _shape(vae_state_dict, "encoder.conv_in.weight", what)[1],
        "out_channels": _shape(vae_state_dict, "decoder.conv_out.weight", what)[0],
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "block_out_channels": [_shape(vae_state_dict, f"encoder.down_blocks.{i}.resnets.0.conv1.weight", what)[0]
                               for i in levels],
        "layers_per_block": layers,
        "latent_channels": _shape(vae_state_dict, "decoder.conv_in.weight", what)[1],
    }


def infer_clip_config(clip_state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """A `CLIPVisionConfig` dict read from converted weights' shapes.

    The head count does not change any key or shape, so it cannot be read back: 1 is used here,
    which is enough to check names and shapes; build the model from SVD-xt's real
    `image_encoder/config.json` (16 heads for ViT-H/14).
    """
    what = "SVD CLIP image encoder"
    hidden = _shape(clip_state_dict, "vision_model.embeddings.class_embedding", what)[0]
    patch = _shape(clip_state_dict, "vision_model.embeddings.patch_embedding.weight", what)[-1]
    positions = _shape(clip_state_dict, "vision_model.embeddings.position_embedding.weight", what)[0]
    side = math.isqrt(positions - 1)
    if side * side != positions - 1:
        raise WeightsError(f"{what}: {positions} position embeddings is not 1 + a square number of patches; {SINGLE_FILE_HINT}")
    layers = len({k.split(".")[3] for k in clip_state_dict if k.startswith("vision_model.encoder.layers.")})
    return {
        "model_type": "clip_vision_model", "hidden_size": hidden, "num_hidden_layers": layers,
        "num_attention_heads": 1, "patch_size": patch, "image_size": side * patch,
        "intermediate_size": _shape(clip_state_dict, "vision_model.encoder.layers.0.mlp.fc1.weight", what)[0],
        "projection_dim": _shape(clip_state_dict, "visual_projection.weight", what)[0],
        "num_channels": _shape(clip_state_dict, "vision_model.embeddings.patch_embedding.weight", what)[1],
    }


_VAE_SHAPE_FIELDS = ("in_channels", "out_channels", "down_block_types", "block_out_channels", "layers_per_block",
                     "latent_channels")
_CLIP_SHAPE_FIELDS = ("hidden_size", "num_hidden_layers", "patch_size", "image_size", "intermediate_size",
                      "projection_dim", "num_channels")
_OPEN_CLIP_HEAD_WIDTH = 64  # OpenCLIP's default width per attention head


def _vae_defaults() -> dict[str, Any]:
    import inspect

    from diffusers import AutoencoderKLTemporalDecoder

    return {name: p.default for name, p in inspect.signature(AutoencoderKLTemporalDecoder.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _clip_vision_part(config: Mapping[str, Any]) -> dict[str, Any]:
    """The vision config of a CLIPVisionConfig dict or of a full CLIPConfig dict, with defaults filled in."""
    from transformers import CLIPVisionConfig

    return {**CLIPVisionConfig().to_dict(), **clip_vision_values(config)}


def _differences(inferred: Mapping[str, Any], reference: Mapping[str, Any], fields: Iterable[str]) -> list[str]:
    def plain(value):
        return list(value) if isinstance(value, (list, tuple)) else value

    return [f"{name} {plain(inferred[name])} (config: {plain(reference.get(name))})" for name in fields
            if plain(inferred[name]) != plain(reference.get(name))]


def _reconcile(inferred: dict[str, Any], reference: dict[str, Any], fields: tuple[str, ...], *, what: str,
               reference_is_builtin: bool, full_size: bool) -> dict[str, Any] | None:
    """The reference config when the shapes agree with it; None for a reduced (test-size) model.

    A disagreement with a config of the user's own, or with SVD-xt's when the file is full size,
    means a damaged or different model: an error naming the fields.
    """
    differences = _differences(inferred, reference, fields)
    if not differences:
        return dict(reference)
    if reference_is_builtin and not full_size:
        return None
    source = "SVD-xt's configuration" if reference_is_builtin else "the SVD folder's config.json"
    raise WeightsError(f"the {what} in the SVD checkpoint does not have the shapes of {source}: "
                       f"{'; '.join(differences[:SHOWN_KEYS])}. The file is damaged or is not SVD-xt; {SINGLE_FILE_HINT}")


def _reduced_clip_heads(hidden: int, reference: Mapping[str, Any]) -> int:
    """Attention heads of a CLIP narrower than the reference: no tensor shape records them."""
    reference_width = int(reference["hidden_size"]) // int(reference["num_attention_heads"])
    for width in (reference_width, _OPEN_CLIP_HEAD_WIDTH):
        if hidden % width == 0:
            return hidden // width
    raise WeightsError(f"the SVD checkpoint's CLIP image encoder is {hidden} wide, which is not SVD-xt's ViT-H/14, "
                       f"and its attention-head count cannot be read from the tensors: put its config.json at "
                       f"stable-video-diffusion-img2vid-xt/image_encoder/config.json beside the Sonic files; {SINGLE_FILE_HINT}")


def single_file_configs(vae_state_dict: Mapping[str, torch.Tensor], clip_state_dict: Mapping[str, torch.Tensor], *,
                        vae_reference: Mapping[str, Any], clip_reference: Mapping[str, Any],
                        vae_reference_is_builtin: bool = True, clip_reference_is_builtin: bool = True
                        ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (VAE, CLIP) configs to build the models of a single-file checkpoint (split already).

    The shapes come from the tensors (`infer_vae_config` / `infer_clip_config`). The reference
    configs (an SVD folder's, else the built-in SVD-xt ones: say which with the `*_is_builtin`
    flags) give what no tensor records: CLIP's
    attention-head count, norm epsilon, activation. A file with the reference's shapes gets the
    reference config unchanged. A file narrower than the built-in SVD-xt (a test-size model)
    keeps the reference's other fields, with the head width kept where it divides. Any other
    disagreement (a full-size file, or a config of the user's own) raises `WeightsError`.
    """
    vae_inferred = infer_vae_config(vae_state_dict)
    vae_ref = {**_vae_defaults(), **vae_reference}
    vae_full_size = max(vae_inferred["block_out_channels"]) >= max(vae_ref["block_out_channels"])
    vae_config = _reconcile(vae_inferred, vae_ref, _VAE_SHAPE_FIELDS, what="VAE",
                            reference_is_builtin=vae_reference_is_builtin, full_size=vae_full_size)
    if vae_config is None:
        vae_config = {**vae_ref, **vae_inferred}

    clip_inferred = infer_clip_config(clip_state_dict)
    clip_ref = _clip_vision_part(clip_reference)
    clip_config = _reconcile(clip_inferred, clip_ref, _CLIP_SHAPE_FIELDS, what="CLIP image encoder",
                             reference_is_builtin=clip_reference_is_builtin,
                             full_size=clip_inferred["hidden_size"] >= clip_ref["hidden_size"])
    if clip_config is None:
        heads = _reduced_clip_heads(clip_inferred["hidden_size"], clip_ref)
        clip_config = {**clip_ref, **clip_inferred, "num_attention_heads": heads}
    return vae_config, clip_config
