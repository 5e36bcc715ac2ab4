"""YOLOv5-face (SPEC 2.1), written here so the release detector's tensors run in our code.

The release's `yoloface_v5m.pt` is a TorchScript program; we never run it. Its tensors are
read by `sonic.weights.torchscript` and loaded into this network. The architecture is the
public YOLOv5-face P3-P5 design (the `yolov5*.yaml` family with 5 facial landmarks):

* stem: `StemBlock` (current YOLOv5-face) or `Focus` followed by a stride-2 conv (the early
  releases); both are recognised from the tensor names;
* backbone: alternating stride-2 convs and C3 blocks, SPP with max-pools 3/5/7, a C3;
* PAN neck: 1x1 conv, nearest x2 upsample, concat, C3 (twice up, twice down);
* head (`Detect`): one 1x1 conv per level, 3 anchors x 16 columns
  `[x, y, w, h, obj, 5 x (lmk_x, lmk_y), cls]`, at strides 8, 16, 32.

Every "Conv" is conv + BatchNorm (eps 1e-3, as YOLOv5 trains it) + SiLU, or conv-with-bias +
SiLU when the file's BatchNorms were fused into the convs (what YOLOv5 exporters save).
Channel widths and block depths are read from the tensor shapes, so every size (n/s/m/l and
the tiny test models) builds from its own file. Module names follow YOLOv5's numbered
`model.<i>` layout so the release's tensor names load with `strict=True`.

Decoding (what the release program returns, SPEC 2.1): with `s = sigmoid(raw)`, grid cell
`g = (x_index, y_index)`, stride `S` and anchor size `A` in pixels:
`xy = (2 s_xy - 0.5 + g) S`, `wh = (2 s_wh)^2 A`, `obj = s_obj`, `cls = s_cls`, and each
landmark `raw_lmk * A + g S` (landmarks are not squashed).
"""

from __future__ import annotations

import torch
from torch import nn

STRIDES = (8, 16, 32)
COLUMNS = 16  # x, y, w, h, obj, 10 landmark coordinates, cls (one class: face)
# YOLOv5-face anchors (w, h) in input pixels per level, used when a file stores none.
DEFAULT_ANCHORS = ((4, 5, 8, 10, 13, 16), (23, 29, 43, 55, 73, 105), (146, 217, 231, 300, 335, 433))
BN_EPS = 1e-3
SPP_KERNELS = (3, 5, 7)


class ConvUnit(nn.Module):
    """YOLOv5 'Conv': k x k conv (padding k//2), BatchNorm or a fused bias, SiLU."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, stride: int = 1, fused: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=fused)
        self.bn = nn.Identity() if fused else nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class StemBlock(nn.Module):
    """Stride-4 stem: conv s2, then a (1x1, 3x3 s2) branch next to a 2x2 max-pool, merged by a 1x1."""

    def __init__(self, shapes: _Shapes, prefix: str) -> None:
        super().__init__()
        self.stem_1 = shapes.conv(f"{prefix}.stem_1", stride=2)
        self.stem_2a = shapes.conv(f"{prefix}.stem_2a")
        self.stem_2b = shapes.conv(f"{prefix}.stem_2b", stride=2)
        self.stem_2p = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.stem_3 = shapes.conv(f"{prefix}.stem_3")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_1(x)
        return self.stem_3(torch.cat((self.stem_2b(self.stem_2a(x)), self.stem_2p(x)), 1))


class Focus(nn.Module):
    """Space-to-depth (each 2x2 pixel block into channels), then one conv."""

    def __init__(self, shapes: _Shapes, prefix: str) -> None:
        super().__init__()
        self.conv = shapes.conv(f"{prefix}.conv")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channel order: (even row, even col), (odd row, even col), (even row, odd col), (odd row, odd col).
        return self.conv(torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1))


class Bottleneck(nn.Module):
    def __init__(self, shapes: _Shapes, prefix: str, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = shapes.conv(f"{prefix}.cv1")
        self.cv2 = shapes.conv(f"{prefix}.cv2")
        self.add = shortcut and self.cv1.conv.in_channels == self.cv2.conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP block: bottlenecks on one 1x1 branch, a plain 1x1 branch, concatenated, merged by a 1x1."""

    def __init__(self, shapes: _Shapes, prefix: str, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = shapes.conv(f"{prefix}.cv1")
        self.cv2 = shapes.conv(f"{prefix}.cv2")
        self.cv3 = shapes.conv(f"{prefix}.cv3")
        depth = shapes.count(f"{prefix}.m.")
        self.m = nn.Sequential(*(Bottleneck(shapes, f"{prefix}.m.{j}", shortcut) for j in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPP(nn.Module):
    def __init__(self, shapes: _Shapes, prefix: str) -> None:
        super().__init__()
        self.cv1 = shapes.conv(f"{prefix}.cv1")
        self.cv2 = shapes.conv(f"{prefix}.cv2")
        self.m = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in SPP_KERNELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [pool(x) for pool in self.m], 1))


class Detect(nn.Module):
    """Per level a 1x1 conv to anchors x 16 raw columns, decoded into input pixels."""

    def __init__(self, shapes: _Shapes, prefix: str) -> None:
        super().__init__()
        convs = []
        for level in range(len(STRIDES)):
            c_out, c_in = shapes.shape(f"{prefix}.m.{level}.weight")[:2]
            convs.append(nn.Conv2d(c_in, c_out, 1))
        self.m = nn.ModuleList(convs)
        self.na = convs[0].out_channels // COLUMNS
        if self.na < 1 or any(c.out_channels != self.na * COLUMNS for c in convs):
            raise ValueError(f"{prefix}.m.*: detection convs must output anchors x {COLUMNS} channels (one class)")
        pixels = torch.tensor(DEFAULT_ANCHORS, dtype=torch.float32).view(len(STRIDES), -1, 2)
        if pixels.shape[1] != self.na:
            pixels = torch.ones(len(STRIDES), self.na, 2)  # placeholder; the file must then bring its anchors
        strides = torch.tensor(STRIDES, dtype=torch.float32).view(-1, 1, 1)
        # YOLOv5's two anchor buffers: in grid cells, and in pixels shaped for broadcasting.
        self.register_buffer("anchors", pixels / strides)
        self.register_buffer("anchor_grid", pixels.clone().view(len(STRIDES), 1, self.na, 1, 1, 2))

    def forward(self, features: list[torch.Tensor], grids: list[torch.Tensor]) -> torch.Tensor:
        rows = []
        for level, (conv, feature, grid) in enumerate(zip(self.m, features, grids)):
            raw = conv(feature)
            bs, _, ny, nx = raw.shape
            raw = raw.view(bs, self.na, COLUMNS, ny, nx).permute(0, 1, 3, 4, 2)
            stride = float(STRIDES[level])
            anchor = self.anchor_grid[level]  # (1, na, 1, 1, 2) pixels
            squashed = raw.sigmoid()
            xy = (squashed[..., 0:2] * 2.0 - 0.5 + grid) * stride
            wh = (squashed[..., 2:4] * 2.0) ** 2 * anchor
            landmarks = [raw[..., 5 + 2 * k:7 + 2 * k] * anchor + grid * stride for k in range(5)]
            out = torch.cat([xy, wh, squashed[..., 4:5]] + landmarks + [squashed[..., 15:16]], -1)
            rows.append(out.reshape(bs, -1, COLUMNS))
        return torch.cat(rows, 1)


class YoloFace(nn.Module):
    """The whole detector: `model(img, grids=None) -> (1, K, 16)` rows in input pixels (SPEC 2.1).

    `img` float (B, 3, H, W) RGB in [0, 1], H and W multiples of 32. `grids` (optional, the
    release program's second input): per stride a (1, 1, H/S, W/S, 2) tensor of (x, y) cell
    indices; built here when omitted.
    """

    def __init__(self, shapes: _Shapes, focus: bool) -> None:
        super().__init__()
        o = 1 if focus else 0  # Focus is followed by its own stride-2 conv: every later index moves by one
        layers: list[nn.Module] = [Focus(shapes, "model.0"), shapes.conv("model.1", stride=2)] if focus \
            else [StemBlock(shapes, "model.0")]
        stride_two = {o + 2, o + 4, o + 6, o + 17, o + 20}
        shortcut = {o + 1, o + 3, o + 5}  # backbone C3s add their input; neck C3s do not
        for i in range(o + 1, o + 23):
            if i == o + 7:
                layers.append(SPP(shapes, f"model.{i}"))
            elif i in (o + 10, o + 14):
                layers.append(nn.Upsample(scale_factor=2.0, mode="nearest"))
            elif i in (o + 11, o + 15, o + 18, o + 21):
                layers.append(nn.Identity())  # concatenation: done in forward
            elif shapes.has(f"model.{i}.cv3.conv.weight"):
                layers.append(C3(shapes, f"model.{i}", i in shortcut))
            else:
                layers.append(shapes.conv(f"model.{i}", stride=2 if i in stride_two else 1))
        layers.append(Detect(shapes, f"model.{o + 23}"))
        self.model = nn.ModuleList(layers)
        self.offset = o

    def forward(self, img: torch.Tensor, grids: list[torch.Tensor] | None = None) -> torch.Tensor:
        m, o = self.model, self.offset
        x = m[1](m[0](img)) if o else m[0](img)
        p3 = m[o + 3](m[o + 2](m[o + 1](x)))
        p4 = m[o + 5](m[o + 4](p3))
        top = m[o + 9](m[o + 8](m[o + 7](m[o + 6](p4))))
        mid = m[o + 13](m[o + 12](torch.cat((m[o + 10](top), p4), 1)))
        small = m[o + 16](torch.cat((m[o + 14](mid), p3), 1))
        medium = m[o + 19](torch.cat((m[o + 17](small), mid), 1))
        large = m[o + 22](torch.cat((m[o + 20](medium), top), 1))
        features = [small, medium, large]
        if grids is None:
            grids = [cell_grid(f.shape[2], f.shape[3], f.device) for f in features]
        return m[o + 23](features, grids)


def cell_grid(ny: int, nx: int, device: torch.device | None = None) -> torch.Tensor:
    """(1, 1, ny, nx, 2) float32 cell indices, last dim (x_index, y_index)."""
    yv, xv = torch.meshgrid(torch.arange(ny, device=device), torch.arange(nx, device=device), indexing="ij")
    return torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2).float()


class _Shapes:
    """Layer sizes read from a state dict's tensor shapes (KeyError names a missing tensor)."""

    def __init__(self, state: dict[str, torch.Tensor], fused: bool) -> None:
        self.state, self.fused = state, fused

    def has(self, key: str) -> bool:
        return key in self.state

    def shape(self, key: str) -> tuple[int, ...]:
        if key not in self.state:
            raise KeyError(key)
        return tuple(self.state[key].shape)

    def count(self, prefix: str) -> int:
        return len({k[len(prefix):].split(".", 1)[0] for k in self.state if k.startswith(prefix)})

    def conv(self, prefix: str, stride: int = 1) -> ConvUnit:
        shape = self.shape(f"{prefix}.conv.weight")
        if len(shape) != 4 or shape[2] != shape[3] or shape[2] % 2 == 0:
            raise ValueError(f"{prefix}.conv.weight has shape {shape}, not a square odd-sized conv kernel")
        return ConvUnit(shape[1], shape[0], shape[2], stride, fused=self.fused)


def yoloface_from_state_dict(state: dict[str, torch.Tensor]) -> YoloFace:
    """Build the network that `state` (YOLOv5 `model.<i>...` names) describes and load it strictly.

    Missing anchor buffers are filled with the YOLOv5-face defaults. YOLOv5 keeps its strides
    as plain tensor attributes (`stride`, `model.<detect>.stride`), which a scripted export
    saves: they are checked against 8/16/32, not loaded. Raises KeyError (a missing tensor),
    ValueError (wrong shapes or strides) or RuntimeError (strict loading); callers turn them
    into a WeightsError.
    """
    fused = not any(k.endswith(".bn.weight") for k in state)
    focus = "model.0.conv.conv.weight" in state
    full = {k: v for k, v in state.items() if k.split(".")[-1] != "stride"}
    for name in state.keys() - full.keys():
        if state[name].numel() != len(STRIDES) or state[name].flatten().tolist() != list(map(float, STRIDES)):
            raise ValueError(f"{name} is {state[name].flatten().tolist()[:8]}, but YOLOv5-face strides are {STRIDES}")
    # Built on the CPU (about 0.5 s for YOLOv5m): the meta device costs seconds on first use.
    model = YoloFace(_Shapes(full, fused), focus)
    for name, value in model.state_dict().items():
        if name.endswith(("anchors", "anchor_grid")) and name not in full:
            full[name] = _default_anchor_buffer(name, value)
    model.load_state_dict(full, strict=True)  # copies, casting e.g. fp16 files to our fp32
    return model.eval()


def _default_anchor_buffer(name: str, meta: torch.Tensor) -> torch.Tensor:
    pixels = torch.tensor(DEFAULT_ANCHORS, dtype=torch.float32).view(len(STRIDES), -1, 2)
    if pixels.shape[1] * 2 * len(STRIDES) != meta.numel():
        raise KeyError(name)  # a non-default anchor count needs the file's own anchors
    if name.endswith("anchor_grid"):
        return pixels.view(meta.shape)
    return pixels / torch.tensor(STRIDES, dtype=torch.float32).view(-1, 1, 1)


def release_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors under YOLOv5's `model.<i>...` names.

    A file whose module is a wrapper around the YOLOv5 model (every name starting with the
    same `<wrapper>.` before `model.0.`) has that prefix removed; anything else stays as it is
    and strict loading reports it.
    """
    starts = sorted({k[: k.index("model.0.")] for k in tensors if "model.0." in k}, key=len)
    for prefix in starts:
        if prefix and all(k.startswith(prefix) for k in tensors):
            return {k[len(prefix):]: v for k, v in tensors.items()}
    return dict(tensors)


def yoloface_shapes(base: int, depths: tuple[int, int, int, int, int], *, fused: bool = False,
                    anchors: int = 3) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a StemBlock YOLOv5-face whose stem has `base` channels.

    Widths double per level (base, 2b, 4b, 8b, 16b; YOLOv5m-face: base 48); `depths` are the
    bottleneck counts of the C3 blocks at layers 1, 3, 5, 8 and of every neck C3
    (YOLOv5m-face: 2, 6, 6, 2, 2). Used to make tiny random detectors for tests and the zoo.
    """
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(prefix: str, c_in: int, c_out: int, k: int) -> None:
        shapes[f"{prefix}.conv.weight"] = (c_out, c_in, k, k)
        norm = ("conv.bias",) if fused else ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")
        shapes.update({f"{prefix}.{n}": (c_out,) for n in norm})
        if not fused:
            shapes[f"{prefix}.bn.num_batches_tracked"] = ()

    def c3(prefix: str, c_in: int, c_out: int, n: int) -> None:
        hidden = c_out // 2
        conv(f"{prefix}.cv1", c_in, hidden, 1)
        conv(f"{prefix}.cv2", c_in, hidden, 1)
        conv(f"{prefix}.cv3", 2 * hidden, c_out, 1)
        for j in range(n):
            conv(f"{prefix}.m.{j}.cv1", hidden, hidden, 1)
            conv(f"{prefix}.m.{j}.cv2", hidden, hidden, 3)

    b = base
    conv("model.0.stem_1", 3, b, 3)
    conv("model.0.stem_2a", b, b // 2, 1)
    conv("model.0.stem_2b", b // 2, b, 3)
    conv("model.0.stem_3", 2 * b, b, 1)
    c3("model.1", b, 2 * b, depths[0])
    conv("model.2", 2 * b, 4 * b, 3)
    c3("model.3", 4 * b, 4 * b, depths[1])
    conv("model.4", 4 * b, 8 * b, 3)
    c3("model.5", 8 * b, 8 * b, depths[2])
    conv("model.6", 8 * b, 16 * b, 3)
    conv("model.7.cv1", 16 * b, 8 * b, 1)
    conv("model.7.cv2", 8 * b * (len(SPP_KERNELS) + 1), 16 * b, 1)
    c3("model.8", 16 * b, 16 * b, depths[3])
    conv("model.9", 16 * b, 8 * b, 1)
    c3("model.12", 16 * b, 8 * b, depths[4])
    conv("model.13", 8 * b, 4 * b, 1)
    c3("model.16", 8 * b, 4 * b, depths[4])
    conv("model.17", 4 * b, 4 * b, 3)
    c3("model.19", 8 * b, 8 * b, depths[4])
    conv("model.20", 8 * b, 8 * b, 3)
    c3("model.22", 16 * b, 16 * b, depths[4])
    for level, c_in in enumerate((4 * b, 8 * b, 16 * b)):
        shapes[f"model.23.m.{level}.weight"] = (anchors * COLUMNS, c_in, 1, 1)
        shapes[f"model.23.m.{level}.bias"] = (anchors * COLUMNS,)
    shapes["model.23.anchors"] = (len(STRIDES), anchors, 2)
    shapes["model.23.anchor_grid"] = (len(STRIDES), 1, anchors, 1, 1, 2)
    return shapes


def random_yoloface(seed: int, base: int = 4, depths=(1, 2, 1, 1, 1), *, fused: bool = False) -> YoloFace:
    """A seeded random-weight YOLOv5-face (tiny by default) with the default anchors."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in yoloface_shapes(base, depths, fused=fused).items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(0)
        elif name.endswith("running_var"):
            state[name] = 0.5 + torch.rand(shape, generator=generator)
        elif name.endswith(("anchors", "anchor_grid")):
            continue  # defaults
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 1
            state[name] = torch.randn(shape, generator=generator) / fan_in ** 0.5
    return yoloface_from_state_dict(state)
