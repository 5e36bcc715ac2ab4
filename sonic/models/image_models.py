"""The two stock SVD-xt image models Sonic reuses: the temporal VAE and the CLIP ViT-H image encoder.

Both are built from their config dicts (SVD-xt `vae/config.json`, `image_encoder/config.json`,
or tiny test configs) and loaded strictly from a state dict in diffusers / transformers naming
(a diffusers folder's weights, or the output of `sonic.svd_single_file.split_svd_single_file`).
diffusers and transformers are imported inside the functions so `import sonic` stays cheap.

Build on the meta device with `with torch.device("meta"): build_vae(config)` to inspect shapes
without allocating memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..config import VAE_SCALING_FACTOR
from ..errors import ParameterError


def _load_strict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], role: str, what: str) -> None:
    from ..weights import HINTS, load_strict

    load_strict(model, state_dict, path=f"the given {what} weights", what=what, hints=HINTS[role])


def _place(model: torch.nn.Module, device, dtype) -> torch.nn.Module:
    model.requires_grad_(False).eval()
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


# --- VAE ------------------------------------------------------------------------------------

def build_vae(config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor] | None = None, *,
              device: torch.device | str | None = None, dtype: torch.dtype | None = None):
    """diffusers `AutoencoderKLTemporalDecoder` from a config dict; strict-loads `state_dict` when given.

    Returned in eval mode, without gradients, on `device` in `dtype` (None: leave as built, fp32 CPU).
    """
    from diffusers import AutoencoderKLTemporalDecoder

    vae = AutoencoderKLTemporalDecoder.from_config(dict(config))
    if state_dict is not None:
        _load_strict(vae, state_dict, "vae", "SVD VAE")
    return _place(vae, device, dtype)


def _module_device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(module.parameters())
    return parameter.device, parameter.dtype


@torch.no_grad()
def encode_reference(vae, pixels: torch.Tensor, *, noise_aug_strength: float = 0.0,
                     noise: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE latents of the reference image (SPEC 6.2), from ONE encode when there is no noise augmentation.

    Args:
        vae: `AutoencoderKLTemporalDecoder` (any device/dtype; `pixels` are cast to it).
        pixels: (1, 3, H, W) reference image in [-1, 1]; H, W multiples of 8 pixels.
        noise_aug_strength: > 0 adds `strength * noise` to the pixels for the concat latent only,
            which costs a second encode (the official code always encodes twice; at 0 both agree).
        noise: (1, 3, H, W) standard-normal pixel noise for the augmentation; drawn from
            `generator` (on the generator's device) when None. Unused at strength 0.

    Returns:
        (ref_latent, image_latent), both float32 (1, 4, H/8, W/8) on the VAE's device:
        `ref_latent = mean * 0.18215` (the latent noise is added to) and
        `image_latent = mode()` unscaled (channel-concatenated to the UNet input).
    """
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ParameterError(f"reference pixels must be (1, 3, H, W), got {tuple(pixels.shape)}")
    if pixels.shape[-1] % 8 or pixels.shape[-2] % 8:
        raise ParameterError(f"reference size {pixels.shape[-1]}x{pixels.shape[-2]} px must be a multiple of 8 "
                             "on both sides")
    if noise_aug_strength < 0:
        raise ParameterError(f"noise_aug_strength must be >= 0, got {noise_aug_strength}")
    device, dtype = _module_device_dtype(vae)
    pixels = pixels.to(device=device, dtype=dtype)
    posterior = vae.encode(pixels).latent_dist
    ref_latent = posterior.mean.float() * VAE_SCALING_FACTOR
    if noise_aug_strength == 0:
        return ref_latent, posterior.mode().float()
    if noise is None:
        noise_device = generator.device if generator is not None else device
        noise = torch.randn(tuple(pixels.shape), generator=generator, device=noise_device, dtype=torch.float32)
    elif noise.shape != pixels.shape:
        raise ParameterError(f"noise shape {tuple(noise.shape)} must equal the pixels' {tuple(pixels.shape)}")
    augmented = pixels + noise_aug_strength * noise.to(device=device, dtype=dtype)
    return ref_latent, vae.encode(augmented).latent_dist.mode().float()


# --- CLIP image encoder ---------------------------------------------------------------------

def clip_vision_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """The CLIPVisionConfig fields of a vision config dict or of a full CLIPConfig dict."""
    values = dict(config)
    if "vision_config" in values:
        projection_dim = values.get("projection_dim")
        values = dict(values["vision_config"])
        if projection_dim is not None:
            values.setdefault("projection_dim", projection_dim)
    values.pop("architectures", None)
    return values


def build_clip_image_encoder(config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor] | None = None, *,
                             device: torch.device | str | None = None, dtype: torch.dtype | None = None):
    """transformers `CLIPVisionModelWithProjection` from a config dict (SVD-xt `image_encoder/config.json`).

    A full `CLIPConfig` dict (with a `vision_config` entry) is accepted too: its vision part is used.
    """
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection(CLIPVisionConfig.from_dict(clip_vision_values(config)))
    if state_dict is not None:
        _load_strict(model, state_dict, "image_encoder", "CLIP image encoder")
    return _place(model, device, dtype)


@torch.no_grad()
def clip_image_embeds(model, clip_pixels: torch.Tensor) -> torch.Tensor:
    """`image_embeds` = visual_projection(post_layernorm(CLS)), NOT L2-normalised (SPEC 2.4).

    Args:
        model: `CLIPVisionModelWithProjection` (any device/dtype; input is cast to it).
        clip_pixels: (B, 3, S, S) CLIP-normalised pixels, S = the config's image_size (224).

    Returns:
        (B, projection_dim) float32 on the model's device.
    """
    size = model.config.image_size
    if clip_pixels.dim() != 4 or tuple(clip_pixels.shape[1:]) != (3, size, size):
        raise ParameterError(f"CLIP pixels must be (B, 3, {size}, {size}), got {tuple(clip_pixels.shape)}")
    device, dtype = _module_device_dtype(model)
    return model(pixel_values=clip_pixels.to(device=device, dtype=dtype)).image_embeds.float()
