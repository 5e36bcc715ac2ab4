"""A second, independent YOLOv5-face for tests: built the way the release program was (a
layer table walked by index, like the public `yolov5m.yaml`), traced into TorchScript with
the release call `model(img, grids)`.

It shares no code with `sonic.models.yoloface`, so agreement between the two checks our
layer wiring, tensor names and decoding, not just our reader. Written from the public
YOLOv5-face description (yaml layer table, SPEC 2.1 call convention).
"""

from __future__ import annotations

import warnings
from typing import List

import torch
from torch import nn

ANCHORS_PX = [[4, 5, 8, 10, 13, 16], [23, 29, 43, 55, 73, 105], [146, 217, 231, 300, 335, 433]]


class RefConv(nn.Module):
    def __init__(self, c1, c2, k=1, s=1, fused=False):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=fused)
        if not fused:
            self.bn = nn.BatchNorm2d(c2, eps=1e-3)
        self.fused = fused
        self.act = nn.SiLU()

    def forward(self, x):
        y = self.conv(x)
        return self.act(y if self.fused else self.bn(y))


class RefStem(nn.Module):
    def __init__(self, c1, c2, fused):
        super().__init__()
        self.stem_1 = RefConv(c1, c2, 3, 2, fused)
        self.stem_2a = RefConv(c2, c2 // 2, 1, 1, fused)
        self.stem_2b = RefConv(c2 // 2, c2, 3, 2, fused)
        self.stem_2p = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        self.stem_3 = RefConv(c2 * 2, c2, 1, 1, fused)

    def forward(self, x):
        a = self.stem_1(x)
        return self.stem_3(torch.cat([self.stem_2b(self.stem_2a(a)), self.stem_2p(a)], dim=1))


class RefFocus(nn.Module):
    def __init__(self, c1, c2, fused):
        super().__init__()
        self.conv = RefConv(4 * c1, c2, 3, 1, fused)

    def forward(self, x):
        parts = [x[:, :, r::2, c::2] for c in (0, 1) for r in (0, 1)]
        return self.conv(torch.cat(parts, dim=1))


class RefBottleneck(nn.Module):
    def __init__(self, c, shortcut, fused):
        super().__init__()
        self.cv1 = RefConv(c, c, 1, 1, fused)
        self.cv2 = RefConv(c, c, 3, 1, fused)
        self.shortcut = shortcut

    def forward(self, x):
        out = self.cv2(self.cv1(x))
        if self.shortcut:
            out = out + x
        return out


class RefC3(nn.Module):
    def __init__(self, c1, c2, n, shortcut, fused):
        super().__init__()
        h = c2 // 2
        self.cv1 = RefConv(c1, h, 1, 1, fused)
        self.cv2 = RefConv(c1, h, 1, 1, fused)
        self.cv3 = RefConv(2 * h, c2, 1, 1, fused)
        self.m = nn.Sequential(*[RefBottleneck(h, shortcut, fused) for _ in range(n)])

    def forward(self, x):
        return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], dim=1))


class RefSPP(nn.Module):
    def __init__(self, c1, c2, fused):
        super().__init__()
        h = c1 // 2
        self.cv1 = RefConv(c1, h, 1, 1, fused)
        self.cv2 = RefConv(4 * h, c2, 1, 1, fused)
        self.m = nn.ModuleList([nn.MaxPool2d(k, 1, k // 2) for k in (3, 5, 7)])

    def forward(self, x):
        x = self.cv1(x)
        return self.cv2(torch.cat([x, self.m[0](x), self.m[1](x), self.m[2](x)], dim=1))


class RefUp(nn.Module):
    def forward(self, x):
        return nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")


class RefCat(nn.Module):
    def forward(self, xs: List[torch.Tensor]):
        return torch.cat(xs, dim=1)


class RefDetect(nn.Module):
    def __init__(self, channels, fused):
        super().__init__()
        self.m = nn.ModuleList([nn.Conv2d(c, 48, 1) for c in channels])
        px = torch.tensor(ANCHORS_PX, dtype=torch.float32).view(3, 3, 2)
        self.register_buffer("anchors", px / torch.tensor([8.0, 16.0, 32.0]).view(3, 1, 1))
        self.register_buffer("anchor_grid", px.clone().view(3, 1, 3, 1, 1, 2))

    def forward(self, xs: List[torch.Tensor], grids: List[torch.Tensor]):
        z = []
        for i in range(3):
            p = self.m[i](xs[i])
            b, _, h, w = p.shape
            p = p.view(b, 3, 16, h, w).permute(0, 1, 3, 4, 2).contiguous()
            y = torch.zeros_like(p)
            sig = p.sigmoid()
            stride = [8.0, 16.0, 32.0][i]
            y[..., 0:2] = (sig[..., 0:2] * 2.0 - 0.5 + grids[i]) * stride
            y[..., 2:4] = (sig[..., 2:4] * 2.0) ** 2 * self.anchor_grid[i]
            y[..., 4] = sig[..., 4]
            y[..., 15] = sig[..., 15]
            for k in range(5):
                y[..., 5 + 2 * k:7 + 2 * k] = p[..., 5 + 2 * k:7 + 2 * k] * self.anchor_grid[i] + grids[i] * stride
            z.append(y.view(b, -1, 16))
        return torch.cat(z, 1)


class RefYoloFace(nn.Module):
    """Layer table (index: from, module) as in yolov5m.yaml; `focus` uses the early Focus stem."""

    def __init__(self, base=4, depths=(1, 2, 1, 1, 1), focus=False, fused=False):
        super().__init__()
        b, (n1, n3, n5, n8, nh), f = base, depths, fused
        stem = [RefFocus(3, b, f), RefConv(b, b, 3, 2, f)] if focus else [RefStem(3, b, f)]
        table = [(-1, m) for m in stem] + [
            (-1, RefC3(b, 2 * b, n1, True, f)), (-1, RefConv(2 * b, 4 * b, 3, 2, f)),
            (-1, RefC3(4 * b, 4 * b, n3, True, f)), (-1, RefConv(4 * b, 8 * b, 3, 2, f)),
            (-1, RefC3(8 * b, 8 * b, n5, True, f)), (-1, RefConv(8 * b, 16 * b, 3, 2, f)),
            (-1, RefSPP(16 * b, 16 * b, f)), (-1, RefC3(16 * b, 16 * b, n8, False, f)),
            (-1, RefConv(16 * b, 8 * b, 1, 1, f)), (-1, RefUp()), ("P4", RefCat()),
            (-1, RefC3(16 * b, 8 * b, nh, False, f)), (-1, RefConv(8 * b, 4 * b, 1, 1, f)), (-1, RefUp()),
            ("P3", RefCat()), (-1, RefC3(8 * b, 4 * b, nh, False, f)), (-1, RefConv(4 * b, 4 * b, 3, 2, f)),
            ("H4", RefCat()), (-1, RefC3(8 * b, 8 * b, nh, False, f)), (-1, RefConv(8 * b, 8 * b, 3, 2, f)),
            ("H5", RefCat()), (-1, RefC3(16 * b, 16 * b, nh, False, f)),
        ]
        o = len(stem) - 1
        # concat partners by layer index, as the yaml lists them
        self.partner = {"P4": 5 + o, "P3": 3 + o, "H4": 13 + o, "H5": 9 + o}
        self.sources = [src for src, _ in table]
        self.outputs = (16 + o, 19 + o, 22 + o)
        self.model = nn.Sequential(*[m for _, m in table], RefDetect((4 * b, 8 * b, 16 * b), f))

    def forward(self, img: torch.Tensor, grids: List[torch.Tensor]):
        saved = []
        x = img
        for i, layer in enumerate(self.model[:-1]):
            src = self.sources[i]
            x = layer([x, saved[self.partner[src]]]) if src != -1 else layer(x)
            saved.append(x)
        return self.model[-1]([saved[i] for i in self.outputs], grids)


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and BatchNorm statistics (the trained ones are not at their init values)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith(("anchors", "anchor_grid", "num_batches_tracked")):
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            else:
                fan_in = t[0].numel() if t.dim() > 1 else 4
                t.copy_(torch.randn(t.shape, generator=g) / fan_in ** 0.5)
    return model.eval()


def grids_for(h: int, w: int) -> List[torch.Tensor]:
    out = []
    for s in (8, 16, 32):
        ys, xs = torch.meshgrid(torch.arange(h // s), torch.arange(w // s), indexing="ij")
        out.append(torch.stack((xs, ys), 2).view(1, 1, h // s, w // s, 2).float())
    return out


def save_traced(model: nn.Module, path, h: int = 64, w: int = 96) -> torch.jit.ScriptModule:
    """Trace `model(img, grids)` at one size and save it as a TorchScript archive, like the release."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (torch.rand(1, 3, h, w), grids_for(h, w)), check_trace=False)
        torch.jit.save(traced, str(path))
    return traced
