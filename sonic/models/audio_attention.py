"""Everything inside one Sonic `TransformerSpatioTemporalModel`: the audio-adapter weights, the face-mask
downsampling and the attention maths (SPEC 5.2-5.4).

The modules are diffusers' own (so state-dict keys stay the official ones); only their forward passes
are ours. What Sonic changes compared with stock SVD:

* every cross-attention (`attn2`) adds an audio attention with its own key/value projections
  (`attn2.processor.to_k_ip.0` / `to_v_ip.0`), weighted by `ip_audio_scale`;
* in the spatial blocks that audio attention is multiplied by the face mask, bicubic-downsampled to the
  level's token grid;
* the temporal blocks attend to the MEAN over the window's frames of both contexts (stock SVD: the first
  frame's context), without mask.

Efficiency (SPEC 10.4-10.5): every attention is PyTorch SDPA; the temporal contexts are projected once per
batch element and attended by all h*w*F queries of that element at once (never copied per pixel); the
downsampled mask is computed once per level per forward and broadcast over frames and channels. Nothing
here reads tensor values on the host, so torch.compile / CUDA graphs can capture it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class AudioAdapterProjections(nn.Module):
    """The audio key/value projections one official IP-adapter processor owns (no bias).

    Registered as `attn2.processor`, so their keys are `...attn2.processor.to_k_ip.0.weight` and
    `...attn2.processor.to_v_ip.0.weight`, exactly as in `unet.pth`. Only `SonicUNet.forward` uses them;
    diffusers' `Attention.forward` must not be called on an adapter-carrying layer.
    """

    def __init__(self, context_dim: int, width: int):
        super().__init__()
        self.to_k_ip = nn.ModuleList([nn.Linear(context_dim, width, bias=False)])
        self.to_v_ip = nn.ModuleList([nn.Linear(context_dim, width, bias=False)])

    @torch.no_grad()
    def copy_from(self, attn: nn.Module) -> None:
        """Initialise from the layer's CLIP projections, as the official `add_ip_adapters` does (the
        checkpoint overwrites them anyway)."""
        self.to_k_ip[0].weight.copy_(attn.to_k.weight)
        self.to_v_ip[0].weight.copy_(attn.to_v.weight)


def attach_audio_adapters(unet: nn.Module) -> int:
    """Give every `attn2` of every spatio-temporal transformer (spatial and temporal block) its audio
    projections. Returns the number of adapted layers (32 for SVD-xt)."""
    count = 0
    for model in unet.modules():
        if not hasattr(model, "temporal_transformer_blocks"):
            continue
        for block in (*model.transformer_blocks, *model.temporal_transformer_blocks):
            attn = block.attn2
            adapter = AudioAdapterProjections(attn.to_k.in_features, attn.to_k.out_features)
            adapter.copy_from(attn)
            attn.set_processor(adapter)
            count += 1
    return count


def face_mask_grid(mask_height: int, mask_width: int, num_queries: int) -> tuple[int, int]:
    """(rows, cols) the official `IPAdapterMaskProcessor.downsample` resizes a mask of this pixel size to
    for `num_queries` tokens. Usually the level's latent grid; not always for unusual aspect ratios.

    rows = int(sqrt(num_queries / (W / H))), plus 1 when it does not divide num_queries; cols =
    num_queries // rows. The square root is taken in float32 as the golden fixture documents (it differs
    from float64 only in rare cases, e.g. 448x1152 px at the deepest level). A zero row count (where the
    official code would divide by zero) is raised to 1.
    """
    ratio = np.float32(mask_width) / np.float32(mask_height)
    rows = max(int(np.sqrt(np.float32(num_queries) / ratio)), 1)
    rows += int(num_queries % rows != 0)
    return rows, num_queries // rows


def downsample_face_mask(face_mask: torch.Tensor, num_queries: int) -> torch.Tensor:
    """The pixel-space face mask (1, 1, H, W) as one weight per query token: shape (num_queries,).

    Bicubic `F.interpolate` (align_corners False, no antialias, so soft masks may leave [0, 1]) to
    `face_mask_grid`, flattened row-major, then zero-padded or truncated to `num_queries`.
    """
    rows, cols = face_mask_grid(face_mask.shape[-2], face_mask.shape[-1], num_queries)
    small = F.interpolate(face_mask.reshape(1, 1, *face_mask.shape[-2:]).float(), size=(rows, cols),
                          mode="bicubic", align_corners=False).reshape(-1)
    if small.numel() < num_queries:
        small = F.pad(small, (0, num_queries - small.numel()))
    return small[:num_queries]


@dataclass
class AttentionConditioning:
    """The cross-attention inputs of one UNet forward, shared by all transformers.

    Rows are branch-major (row = b * num_frames + f).
    """

    clip: torch.Tensor  # (B*F, Tc, Dc) per-frame CLIP context (spatial layers)
    audio: torch.Tensor  # (B*F, Ta, Dc) per-frame audio tokens (spatial layers)
    num_frames: int  # F, frames of the window
    audio_scale: float  # ip_audio_scale
    face_mask: torch.Tensor | None  # (1, 1, H, W) pixel space, or None for no mask
    image_only_indicator: torch.Tensor  # (B, F) zeros: AlphaBlender uses sigmoid(mix_factor)
    clip_mean: torch.Tensor = field(init=False)  # (B, Tc, Dc) window mean (temporal layers)
    audio_mean: torch.Tensor = field(init=False)  # (B, Ta, Dc)
    _masks: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.clip_mean = window_mean(self.clip, self.num_frames)
        self.audio_mean = window_mean(self.audio, self.num_frames)

    def mask_for(self, height: int, width: int, dtype: torch.dtype) -> torch.Tensor | None:
        """The face mask for a token grid of height x width latent cells, shape (h*w,), cached per grid."""
        if self.face_mask is None:
            return None
        key = (height, width, dtype)
        if key not in self._masks:
            self._masks[key] = downsample_face_mask(self.face_mask, height * width).to(dtype)
        return self._masks[key]


def window_mean(context: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(B*F, T, D) -> (B, T, D): mean over the F frames of each batch row (Sonic's temporal context)."""
    rows, tokens, width = context.shape
    return context.reshape(rows // num_frames, num_frames, tokens, width).mean(dim=1)


# --- attention ----------------------------------------------------------------------------------

def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, L, heads*d) -> (N, heads, L, d)"""
    n, length, width = x.shape
    return x.view(n, length, heads, width // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(N, heads, L, d) -> (N, L, heads*d)"""
    n, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(n, length, heads * dim)


def _attend(q: torch.Tensor, key_proj: nn.Module, value_proj: nn.Module, context: torch.Tensor,
            heads: int) -> torch.Tensor:
    """SDPA of the already split queries over `context` projected by key_proj/value_proj; (N, L, C)."""
    k = _split_heads(key_proj(context), heads)
    v = _split_heads(value_proj(context), heads)
    return _merge_heads(F.scaled_dot_product_attention(q, k, v)).to(q.dtype)


def self_attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Plain multi-head self-attention of a diffusers `Attention` (attn1); x (N, L, C) -> (N, L, C)."""
    q = _split_heads(attn.to_q(x), attn.heads)
    out = _attend(q, attn.to_k, attn.to_v, x, attn.heads)
    return attn.to_out[1](attn.to_out[0](out))


def audio_cross_attention(attn: nn.Module, x: torch.Tensor, clip: torch.Tensor, audio: torch.Tensor,
                          audio_scale: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sonic attn2: `to_out(SDPA(q, clip) + audio_scale * SDPA_ip(q, audio) * mask)`.

    x (N, L, C) queries; clip (N, Tc, Dc) and audio (N, Ta, Dc) contexts with one row per query row;
    mask (L,) weights per query token or None. Returns (N, L, C).
    """
    adapter = attn.processor
    q = _split_heads(attn.to_q(x), attn.heads)
    main = _attend(q, attn.to_k, attn.to_v, clip, attn.heads)
    aud = _attend(q, adapter.to_k_ip[0], adapter.to_v_ip[0], audio, attn.heads)
    if mask is not None:
        aud = aud * mask.view(1, -1, 1)
    return attn.to_out[1](attn.to_out[0](main + audio_scale * aud))


def temporal_audio_cross_attention(attn: nn.Module, x: torch.Tensor, clip_mean: torch.Tensor,
                                   audio_mean: torch.Tensor, audio_scale: float) -> torch.Tensor:
    """attn2 of a temporal block: x (B*hw, F, C) frame sequences, one per pixel; contexts (B, T, Dc).

    Every pixel sequence of batch element b attends to the same window-mean keys, and cross-attention
    queries do not interact, so the queries are regrouped to (B, hw*F, C) and attend once per element:
    the same numbers as the official per-pixel copies of the context, without materialising them.
    """
    batch = clip_mean.shape[0]
    rows, frames, width = x.shape
    grouped = x.reshape(batch, (rows // batch) * frames, width)
    out = audio_cross_attention(attn, grouped, clip_mean, audio_mean, audio_scale)
    return out.reshape(rows, frames, -1)


# --- transformer blocks ---------------------------------------------------------------------------

def spatial_block(block: nn.Module, x: torch.Tensor, cond: AttentionConditioning,
                  mask: torch.Tensor | None) -> torch.Tensor:
    """diffusers `BasicTransformerBlock` (layer-norm variant) with Sonic's attn2; x (B*F, hw, C)."""
    x = self_attention(block.attn1, block.norm1(x)) + x
    x = audio_cross_attention(block.attn2, block.norm2(x), cond.clip, cond.audio, cond.audio_scale, mask) + x
    return block.ff(block.norm3(x)) + x


def temporal_block(block: nn.Module, x: torch.Tensor, cond: AttentionConditioning) -> torch.Tensor:
    """diffusers `TemporalBasicTransformerBlock` with Sonic's window-mean attn2; x (B*F, hw, C)."""
    frames = cond.num_frames
    batch_frames, tokens, width = x.shape
    batch = batch_frames // frames
    # (B*F, hw, C) -> (B*hw, F, C): one sequence over the frames per pixel
    x = x.reshape(batch, frames, tokens, width).permute(0, 2, 1, 3).reshape(batch * tokens, frames, width)
    residual = x
    x = block.ff_in(block.norm_in(x))
    if block.is_res:
        x = x + residual
    x = self_attention(block.attn1, block.norm1(x)) + x
    x = temporal_audio_cross_attention(block.attn2, block.norm2(x), cond.clip_mean, cond.audio_mean,
                                       cond.audio_scale) + x
    out = block.ff(block.norm3(x))
    x = out + x if block.is_res else out
    return x.reshape(batch, tokens, frames, -1).permute(0, 2, 1, 3).reshape(batch_frames, tokens, -1)


def spatio_temporal_transformer(model: nn.Module, hidden: torch.Tensor,
                                cond: AttentionConditioning) -> torch.Tensor:
    """Forward of a diffusers `TransformerSpatioTemporalModel` as Sonic runs it.

    hidden (B*F, C, h, w) -> (B*F, C, h, w). The frame-index embedding uses arange(F) for every call, so it
    restarts at 0 in every window.
    """
    batch_frames, channels, height, width = hidden.shape
    frames = cond.num_frames
    residual = hidden
    x = model.norm(hidden).permute(0, 2, 3, 1).reshape(batch_frames, height * width, channels)
    x = model.proj_in(x)

    frame_index = torch.arange(frames, device=x.device).repeat(batch_frames // frames)
    frame_emb = model.time_pos_embed(model.time_proj(frame_index).to(x.dtype))[:, None, :]
    mask = cond.mask_for(height, width, x.dtype)

    for block, t_block in zip(model.transformer_blocks, model.temporal_transformer_blocks):
        x = spatial_block(block, x, cond, mask)
        x_temporal = temporal_block(t_block, x + frame_emb, cond)
        x = model.time_mixer(x_spatial=x, x_temporal=x_temporal, image_only_indicator=cond.image_only_indicator)

    x = model.proj_out(x)
    x = x.reshape(batch_frames, height, width, -1).permute(0, 3, 1, 2).contiguous()
    return x + residual


def check_plain_attention(attn: nn.Module, where: str) -> None:
    """Our attention maths covers the plain diffusers `Attention` SVD uses; refuse anything fancier
    (a different diffusers default would otherwise be silently ignored)."""
    plain = (attn.norm_cross is None and attn.group_norm is None and attn.spatial_norm is None
             and attn.norm_q is None and attn.norm_k is None and not attn.residual_connection
             and attn.rescale_output_factor == 1.0 and attn.scale_qk
             and math.isclose(attn.scale, (attn.to_q.out_features // attn.heads) ** -0.5))
    if not plain:
        raise NotImplementedError(f"{where}: unexpected diffusers Attention options; the Sonic UNet supports "
                                  "only the plain SVD attention")
