"""The Sonic UNet: diffusers' `UNetSpatioTemporalConditionModel` (SVD-xt) with audio IP-adapters (SPEC 5).

`build_sonic_unet(config)` builds the stock diffusers modules from a diffusers UNet config, gives every
cross-attention its audio projections, and wraps them in `SonicUNet`, whose state-dict keys are exactly
those of the official `unet.pth` (1492 keys for SVD-xt). `SonicUNet.forward` is our own: it walks the stock
down/mid/up blocks and runs every spatio-temporal transformer through `audio_attention`.

diffusers is imported only inside `build_sonic_unet`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ParameterError, WeightsError
from .audio_attention import (AttentionConditioning, attach_audio_adapters, check_plain_attention,
                              spatio_temporal_transformer)

ADAPTER_KEY_MARKERS = (".attn2.processor.to_k_ip.0.weight", ".attn2.processor.to_v_ip.0.weight")


class SonicUNet(nn.Module):
    """Sonic's video UNet. Build it with `build_sonic_unet`.

    Call: `unet(sample, timestep, clip_context, audio_context, added_time_ids, face_mask) -> v`, see
    `forward`. The audio attention weight (`ip_audio_scale`) is a forward argument, so one shared
    UNet serves runs with different settings without holding per-run state.
    """

    def __init__(self, stock: nn.Module, *, config: Mapping[str, Any]):
        super().__init__()
        # Adopt the stock sub-modules under their own names: the state-dict keys stay the official ones.
        for name, child in stock.named_children():
            self.add_module(name, child)
        self.num_upsamplers = int(stock.num_upsamplers)
        self.config = dict(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    @property
    def context_dim(self) -> int:
        """Width Dc of the CLIP embedding and of the audio tokens (1024 for the real model)."""
        return self.mid_block.attentions[0].transformer_blocks[0].attn2.to_k.in_features

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float, clip_context: torch.Tensor,
                audio_context: torch.Tensor, added_time_ids: torch.Tensor,
                face_mask: torch.Tensor | None = None, *, audio_scale: float = 1.0,
                intermediates: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """One denoiser evaluation (v-prediction) of a window.

        sample: (B, F, 8, h, w) latents; channels 0-3 scaled noisy latents, 4-7 the image latent.
        timestep: 0-d tensor (or float, or a (B,) tensor) t = 0.25 * ln(sigma).
        clip_context: (B*F, Tc, Dc) CLIP embedding rows; audio_context: (B*F, Ta, Dc) audio tokens.
            Rows are branch-major: row = b * F + f.
        added_time_ids: (B, 3) [fps, motion bucket, expression bucket].
        face_mask: (1, 1, H, W) pixel-space mask weighting the spatial audio attention, or None (no mask).
        audio_scale: weight of the audio attention in every attn2 layer (`ip_audio_scale`, official 1.0).
        intermediates: optional dict that receives named activations (debugging / tests).
        Returns (B, F, 4, h, w) in the model dtype. Inputs are moved to the model's device and dtype.
        """
        self._check_inputs(sample, timestep, clip_context, audio_context, added_time_ids, face_mask)
        device, dtype = self.device, self.dtype
        batch, frames = sample.shape[:2]

        def record(name: str, value: torch.Tensor) -> None:
            if intermediates is not None:
                intermediates[name] = value

        emb = self._embed_time(timestep, added_time_ids, batch, record)
        emb = emb.repeat_interleave(frames, dim=0, output_size=batch * frames)
        cond = AttentionConditioning(
            clip=clip_context.to(device, dtype), audio=audio_context.to(device, dtype), num_frames=frames,
            audio_scale=float(audio_scale),
            face_mask=None if face_mask is None else face_mask.to(device, torch.float32),
            image_only_indicator=torch.zeros(batch, frames, dtype=dtype, device=device))

        hidden = self.conv_in(sample.to(device, dtype).flatten(0, 1))
        record("conv_in", hidden)

        skips: tuple[torch.Tensor, ...] = (hidden,)
        for i, block in enumerate(self.down_blocks):
            hidden, states = self._down_block(block, hidden, emb, cond)
            skips += states
            record(f"down_blocks_{i}", hidden)

        hidden = self._mid_block(self.mid_block, hidden, emb, cond)
        record("mid_block", hidden)

        # Sizes that are not multiples of 2**num_upsamplers need explicit upsample sizes (stock rule).
        forward_upsample_size = any(s % 2**self.num_upsamplers != 0 for s in sample.shape[-2:])
        for i, block in enumerate(self.up_blocks):
            count = len(block.resnets)
            block_skips, skips = skips[-count:], skips[:-count]
            upsample_size = skips[-1].shape[2:] if forward_upsample_size and i < len(self.up_blocks) - 1 else None
            hidden = self._up_block(block, hidden, block_skips, emb, cond, upsample_size)
            record(f"up_blocks_{i}", hidden)

        hidden = self.conv_out(self.conv_act(self.conv_norm_out(hidden)))
        record("conv_out", hidden)
        return hidden.reshape(batch, frames, *hidden.shape[1:])

    # --- pieces of the forward -------------------------------------------------------------------

    def _embed_time(self, timestep, added_time_ids: torch.Tensor, batch: int, record) -> torch.Tensor:
        """Timestep + added-time-id embedding, (B, time_embed_dim)."""
        device, dtype = self.device, self.dtype
        t = torch.as_tensor(timestep, device=device)
        t = t.reshape(-1).expand(batch)
        t_proj = self.time_proj(t)  # float32 sinusoid [cos | sin]
        record("time_proj", t_proj)
        emb = self.time_embedding(t_proj.to(dtype))
        record("time_embedding", emb)

        ids = added_time_ids.to(device)
        if dtype == torch.float16:
            ids = ids.to(torch.float16)  # the official ids are fp16 (127.3 -> 127.25); in fp32 they stay exact
        ids_proj = self.add_time_proj(ids.flatten())
        record("add_time_proj", ids_proj)
        aug = self.add_embedding(ids_proj.reshape(batch, -1).to(dtype))
        record("add_embedding", aug)
        return emb + aug

    def _down_block(self, block, hidden, emb, cond):
        states = ()
        attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
        for resnet, attn in zip(block.resnets, attentions):
            hidden = resnet(hidden, emb, image_only_indicator=cond.image_only_indicator)
            if attn is not None:
                hidden = spatio_temporal_transformer(attn, hidden, cond)
            states += (hidden,)
        if block.downsamplers is not None:
            for downsampler in block.downsamplers:
                hidden = downsampler(hidden)
            states += (hidden,)
        return hidden, states

    def _mid_block(self, block, hidden, emb, cond):
        hidden = block.resnets[0](hidden, emb, image_only_indicator=cond.image_only_indicator)
        for attn, resnet in zip(block.attentions, block.resnets[1:]):
            hidden = spatio_temporal_transformer(attn, hidden, cond)
            hidden = resnet(hidden, emb, image_only_indicator=cond.image_only_indicator)
        return hidden

    def _up_block(self, block, hidden, skips, emb, cond, upsample_size):
        attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
        for resnet, attn in zip(block.resnets, attentions):
            hidden, skips = torch.cat([hidden, skips[-1]], dim=1), skips[:-1]
            hidden = resnet(hidden, emb, image_only_indicator=cond.image_only_indicator)
            if attn is not None:
                hidden = spatio_temporal_transformer(attn, hidden, cond)
        if block.upsamplers is not None:
            for upsampler in block.upsamplers:
                hidden = upsampler(hidden, upsample_size)
        return hidden

    def _check_inputs(self, sample, timestep, clip_context, audio_context, added_time_ids, face_mask) -> None:
        """Shape checks only (no tensor values are read, so this never synchronises a GPU)."""
        in_channels = self.conv_in.in_channels
        if not isinstance(sample, torch.Tensor) or sample.ndim != 5 or sample.shape[2] != in_channels:
            raise ParameterError(f"UNet sample must be a (B, F, {in_channels}, h, w) tensor, got "
                                 f"{_shape(sample)}")
        batch, frames = sample.shape[:2]
        rows, width = batch * frames, self.context_dim
        for name, ctx in (("clip_context", clip_context), ("audio_context", audio_context)):
            if not isinstance(ctx, torch.Tensor) or ctx.ndim != 3 or ctx.shape[0] != rows or ctx.shape[2] != width:
                raise ParameterError(f"UNet {name} must be (B*F, tokens, {width}) = ({rows}, tokens, {width}) "
                                     f"with rows ordered b*F + f, got {_shape(ctx)}")
        num_ids = self.add_embedding.linear_1.in_features // self.add_time_proj.num_channels
        if not isinstance(added_time_ids, torch.Tensor) or tuple(added_time_ids.shape) != (batch, num_ids):
            raise ParameterError(f"UNet added_time_ids must be ({batch}, {num_ids}) [fps, motion, expression], "
                                 f"got {_shape(added_time_ids)}")
        if isinstance(timestep, torch.Tensor) and timestep.numel() not in (1, batch):
            raise ParameterError(f"UNet timestep must be a scalar or have {batch} elements, got {_shape(timestep)}")
        if face_mask is not None and (not isinstance(face_mask, torch.Tensor) or face_mask.ndim != 4
                                      or face_mask.shape[:2] != (1, 1)):
            raise ParameterError(f"UNet face_mask must be a (1, 1, H, W) pixel-space tensor or None, "
                                 f"got {_shape(face_mask)}")


def _shape(value) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__


def build_sonic_unet(config: Mapping[str, Any]) -> SonicUNet:
    """The Sonic UNet for a diffusers `UNetSpatioTemporalConditionModel` config (e.g. the SVD-xt
    `unet/config.json`), with the audio adapters added. Parameters are freshly initialised (load
    `unet.pth` afterwards); inside a `torch.device("meta")` context nothing is allocated.
    """
    from diffusers.models.unets.unet_spatio_temporal_condition import UNetSpatioTemporalConditionModel

    class_name = config.get("_class_name", "UNetSpatioTemporalConditionModel")
    if class_name != "UNetSpatioTemporalConditionModel":
        raise WeightsError(f"the UNet config is for a {class_name}, not the UNetSpatioTemporalConditionModel of "
                           "stable-video-diffusion-img2vid-xt; use that model's unet/config.json")
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    allowed = set(inspect.signature(UNetSpatioTemporalConditionModel.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise WeightsError(f"the UNet config has unknown keys {unknown}; expected the unet/config.json of "
                           "stable-video-diffusion-img2vid-xt")
    try:
        stock = UNetSpatioTemporalConditionModel(**kwargs)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"the UNet config cannot build an SVD UNet: {exc}") from exc
    # diffusers' AlphaBlender creates its mix_factor with torch.Tensor(...), which ignores a default-device
    # context (e.g. meta): move those stragglers to where everything else was built.
    stock.to(torch.empty(0).device)
    for name, module in stock.named_modules():
        if name.endswith((".attn1", ".attn2")):
            check_plain_attention(module, name)
    attach_audio_adapters(stock)
    return SonicUNet(stock, config=kwargs)


def adapter_keys(keys: Iterable[str]) -> list[str]:
    """The audio-adapter keys (`...attn2.processor.to_k_ip.0.weight` / `to_v_ip`) among `keys`."""
    return [k for k in keys if k.endswith(ADAPTER_KEY_MARKERS)]
