"""RIFE HDv3 `IFNet`: the optical-flow network Sonic uses to double 12.5 fps to 25 fps (SPEC section 7).

Three coarse-to-fine `IFBlock`s (working at 1/4, 1/2 and full resolution) estimate a 4-channel
flow (channels 0-1 warp image 0, channels 2-3 warp image 1) and a 1-channel blend mask. A
fourth block, `block_tea` (the training-time teacher), is part of the released `flownet.pkl`
and is kept so that strict loading works, but it never runs.

Parameter names equal the keys of `flownet.pkl` once the `module.` prefix is removed (see
`rife_state_dict`). The channel width (90 in the release, 16 in the golden fixture) and the
input widths of the blocks are read from the state dict, never hard-coded.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError

# Coarse-to-fine resolution divisors of block0, block1, block2 (official scale_list at scale=1.0).
STAGE_SCALES = (4, 2, 1)
# Both sides must be divisible by this: the 1/4-resolution stage goes through two stride-2
# convolutions and back; other sizes must be padded by the caller (see sonic.diffusion.interpolate).
SIZE_MULTIPLE = 16
# Input channels of the student blocks: two RGB images + the mask (7) + the 4-channel flow.
STUDENT_IN_CHANNELS = 11

_DISK_PREFIX = "module."


def _conv_prelu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution + per-channel PReLU (keys `<i>.0.*` conv, `<i>.1.weight` slope)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=True), nn.PReLU(out_channels))


def _upsampling_head(width: int, out_channels: int) -> nn.Sequential:
    """Two transposed 4x4 stride-2 convolutions back to the block's input resolution."""
    return nn.Sequential(nn.ConvTranspose2d(width, width // 2, 4, 2, 1), nn.PReLU(width // 2),
                         nn.ConvTranspose2d(width // 2, out_channels, 4, 2, 1))


def _resize(x: torch.Tensor, factor: float) -> torch.Tensor:
    # scale_factor given and not recomputed: the official call, so output sizes are floor(size * factor).
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False, recompute_scale_factor=False)


class IFBlock(nn.Module):
    """One flow stage: downsample by 4 (two stride-2 convs), 4 residual conv pairs, upsample by 4.

    Args:
        in_channels: image/mask channels + 4 flow channels (11 for the student blocks, 14 for the teacher).
        width: feature channels (90 in the released model).
    """

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.conv0 = nn.Sequential(_conv_prelu(in_channels, width // 2, stride=2), _conv_prelu(width // 2, width, stride=2))
        self.convblock0 = nn.Sequential(_conv_prelu(width, width), _conv_prelu(width, width))
        self.convblock1 = nn.Sequential(_conv_prelu(width, width), _conv_prelu(width, width))
        self.convblock2 = nn.Sequential(_conv_prelu(width, width), _conv_prelu(width, width))
        self.convblock3 = nn.Sequential(_conv_prelu(width, width), _conv_prelu(width, width))
        self.conv1 = _upsampling_head(width, 4)  # flow
        self.conv2 = _upsampling_head(width, 1)  # mask logit

    def forward(self, x: torch.Tensor, flow: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B,C,H,W) images+mask, flow (B,4,H,W) in pixels -> (flow delta, mask delta) at (H,W)."""
        x = _resize(x, 1.0 / scale)
        # Flow values are pixel displacements: they shrink with the image.
        flow = _resize(flow, 1.0 / scale) * (1.0 / scale)
        feat = self.conv0(torch.cat((x, flow), 1))
        feat = self.convblock0(feat) + feat
        feat = self.convblock1(feat) + feat
        feat = self.convblock2(feat) + feat
        feat = self.convblock3(feat) + feat
        flow = _resize(self.conv1(feat), scale) * scale
        mask = _resize(self.conv2(feat), scale)
        return flow, mask


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample `image` (B,C,H,W) at pixel positions shifted by `flow` (B,2,H,W: x then y, pixels).

    Bilinear, border padding, align_corners=True, exactly as RIFE's `warp`.
    """
    batch, _, height, width = flow.shape
    xs = torch.linspace(-1.0, 1.0, width, device=flow.device, dtype=flow.dtype).view(1, 1, 1, width).expand(batch, -1, height, -1)
    ys = torch.linspace(-1.0, 1.0, height, device=flow.device, dtype=flow.dtype).view(1, 1, height, 1).expand(batch, -1, -1, width)
    base = torch.cat([xs, ys], 1)
    # Pixels -> normalised [-1, 1] coordinates (align_corners=True: the extreme pixels are at +-1).
    normalised = torch.cat([flow[:, 0:1] / ((image.shape[3] - 1.0) / 2.0), flow[:, 1:2] / ((image.shape[2] - 1.0) / 2.0)], 1)
    grid = (base + normalised).permute(0, 2, 3, 1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _swap_flow_halves(flow: torch.Tensor) -> torch.Tensor:
    return torch.cat((flow[:, 2:4], flow[:, :2]), 1)


class IFNet(nn.Module):
    """RIFE HDv3 interpolation network (released `flownet.pkl`: width 90, teacher input 14).

    Args:
        width: feature channels of every block.
        teacher_in_channels: input channels of the unused `block_tea` (14 in the release).
    """

    def __init__(self, width: int = 90, teacher_in_channels: int = 14):
        super().__init__()
        self.block0 = IFBlock(STUDENT_IN_CHANNELS, width)
        self.block1 = IFBlock(STUDENT_IN_CHANNELS, width)
        self.block2 = IFBlock(STUDENT_IN_CHANNELS, width)
        self.block_tea = IFBlock(teacher_in_channels, width)  # training-only teacher, never run

    def flows(self, img0: torch.Tensor, img1: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the three stages on (B,3,H,W) images in [0,1]; H, W multiples of `SIZE_MULTIPLE`.

        Returns intermediates (all (B,*,H,W)): `flow_stage0`, `flow_stage1`, `flow` (final),
        `mask_sigmoid` (blend weight of warped img0) and `middle` (the unclamped frame).
        """
        flow = torch.zeros_like(img0[:, :1]).expand(-1, 4, -1, -1).contiguous()
        mask = torch.zeros_like(img0[:, :1])
        warped0, warped1 = img0, img1
        out: dict[str, torch.Tensor] = {}
        for stage, (block, scale) in enumerate(zip((self.block0, self.block1, self.block2), STAGE_SCALES)):
            # The block runs twice, the second time with the images swapped and the mask negated;
            # averaging the two makes the estimate symmetric in time.
            f0, m0 = block(torch.cat((warped0, warped1, mask), 1), flow, scale)
            f1, m1 = block(torch.cat((warped1, warped0, -mask), 1), _swap_flow_halves(flow), scale)
            flow = flow + (f0 + _swap_flow_halves(f1)) / 2
            mask = mask + (m0 + (-m1)) / 2
            # Always warp the ORIGINAL images with the accumulated flow.
            warped0 = backward_warp(img0, flow[:, :2])
            warped1 = backward_warp(img1, flow[:, 2:4])
            if stage < len(STAGE_SCALES) - 1:
                out[f"flow_stage{stage}"] = flow
        weight = torch.sigmoid(mask)
        out["flow"] = flow
        out["mask_sigmoid"] = weight
        out["middle"] = warped0 * weight + warped1 * (1 - weight)
        return out

    def forward(self, img0: torch.Tensor, img1: torch.Tensor) -> torch.Tensor:
        """The frame halfway between img0 and img1, (B,3,H,W), NOT clamped (the official output)."""
        return self.flows(img0, img1)["middle"]


def rife_state_dict(raw: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of a loaded `flownet.pkl` (or its safetensors twin) -> `IFNet` parameter names.

    The release stores every key with a `module.` prefix (DataParallel). Like the official loader
    we keep only keys containing `module.` and remove it. Unlike it, a dict that already has bare
    keys (`block0.conv0.0.0.weight`, e.g. a re-saved model) is accepted as is: the strict load that
    follows still rejects anything that is not an IFNet. A mix of both styles, or a dict with
    neither, is a `WeightsError`.
    """
    keys = list(raw)
    prefixed = [k for k in keys if _DISK_PREFIX in k]
    if prefixed:
        if len(prefixed) != len(keys):
            stray = [k for k in keys if _DISK_PREFIX not in k][:5]
            raise WeightsError(f"RIFE flownet checkpoint mixes 'module.'-prefixed keys with bare keys (e.g. {stray}); "
                               "re-download flownet.pkl from LeonJoe13/Sonic (RIFE/flownet.pkl)")
        return {k.replace(_DISK_PREFIX, ""): v for k, v in raw.items()}
    if any(k.startswith("block0.") for k in keys):
        return dict(raw)
    raise WeightsError(f"this file is not a RIFE flownet checkpoint: expected keys like 'module.block0.conv0.0.0.weight', "
                       f"got {keys[:5]}{' ...' if len(keys) > 5 else ''}; use RIFE/flownet.pkl from LeonJoe13/Sonic")


def _shape(state: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise WeightsError(f"RIFE flownet checkpoint lacks '{key}'; the file is incomplete or not RIFE HDv3 "
                           "(use RIFE/flownet.pkl from LeonJoe13/Sonic)")
    return tuple(state[key].shape)


def rife_dimensions(state: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(width, teacher_in_channels) read from a bare-key state dict."""
    width = _shape(state, "block0.conv0.1.0.weight")[0]
    teacher_in = _shape(state, "block_tea.conv0.0.0.weight")[1]
    student_in = _shape(state, "block0.conv0.0.0.weight")[1]
    if student_in != STUDENT_IN_CHANNELS:
        raise WeightsError(f"RIFE block0 takes {student_in} input channels, expected {STUDENT_IN_CHANNELS} (RIFE HDv3); "
                           "this is a different RIFE version: use RIFE/flownet.pkl from LeonJoe13/Sonic")
    return width, teacher_in


def build_rife(raw_state_dict: Mapping[str, torch.Tensor], *, device=None) -> IFNet:
    """An fp32 `IFNet` in eval mode, loaded strictly from a (prefixed or bare) flownet state dict."""
    state = rife_state_dict(raw_state_dict)
    width, teacher_in = rife_dimensions(state)
    model = IFNet(width, teacher_in)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:500]
        raise WeightsError(f"RIFE flownet checkpoint does not match RIFE HDv3 IFNet ({detail}); "
                           "use RIFE/flownet.pkl from LeonJoe13/Sonic") from exc
    model.requires_grad_(False).eval()
    return model.to(device) if device is not None else model
