"""Picture decoding: any supported picture (file, PIL image, numpy array, ComfyUI IMAGE tensor) ->
one uint8 RGB array, with pixel-count limits checked before the pixels are decoded."""

from __future__ import annotations

import logging
import numbers
import os
import re
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..config import DEFAULT_MAX_IMAGE_PIXELS, SIZE_MULTIPLE
from ..errors import ImageError, ParameterError

logger = logging.getLogger(__name__)

MIN_IMAGE_SIDE = 32  # px: anything smaller cannot hold a usable face


def load_image(source, *, max_image_pixels: int | None = None, limit_name: str = "max_image_pixels") -> np.ndarray:
    """Any supported picture -> uint8 RGB array (height, width, 3).

    Accepted: a file path (PNG, JPEG, WebP, BMP, ... anything Pillow reads; EXIF orientation
    is applied), a PIL image, a numpy array (uint8/uint16 or float in [0, 1]; HxW gray, HxWx1,
    HxWx3 RGB or HxWx4 RGBA) or a ComfyUI IMAGE tensor (float [B,H,W,C] in [0, 1], image 0 is
    used; [H,W,C] also accepted). Transparent pixels are composited over WHITE. 16-bit
    pictures are scaled to 8 bits (value / 257). `max_image_pixels` caps width*height of the
    picture (default 40 megapixels) so a huge file fails fast, before decoding, with a clear
    message instead of exhausting memory; `limit_name` is how that message names the setting
    (e.g. the CLI flag `--max-image-pixels`).
    """
    from PIL import Image

    limit = _image_limit(max_image_pixels, limit_name)
    if isinstance(source, (str, os.PathLike)):
        rgb = _load_image_file(os.fspath(source), limit)
    elif isinstance(source, Image.Image):
        _check_size(source.width, source.height, limit, "the image")
        rgb = _pil_to_rgb(_exif_upright(source))
    elif isinstance(source, torch.Tensor):
        rgb = _array_to_rgb(_comfy_tensor_to_array(source), "the image tensor")
    elif isinstance(source, np.ndarray):
        rgb = _array_to_rgb(source, "the image array")
    else:
        raise ImageError(f"cannot use a {type(source).__name__} as an image: give a file path, a PIL image, "
                         f"a numpy array or a ComfyUI IMAGE tensor")
    _check_size(rgb.shape[1], rgb.shape[0], limit, "the image")
    return np.ascontiguousarray(rgb)


@dataclass(frozen=True)
class _ImageLimit:
    """The picture-size cap and the name of the setting that raises it (for messages)."""

    pixels: int
    name: str


def _image_limit(max_image_pixels, limit_name: str) -> _ImageLimit:
    if max_image_pixels is None:
        return _ImageLimit(DEFAULT_MAX_IMAGE_PIXELS, limit_name)
    if isinstance(max_image_pixels, bool) or not isinstance(max_image_pixels, numbers.Integral) \
            or max_image_pixels < SIZE_MULTIPLE * SIZE_MULTIPLE:
        raise ParameterError(f"{limit_name} must be a whole number of pixels >= 4096, got {max_image_pixels!r}")
    return _ImageLimit(int(max_image_pixels), limit_name)


def _load_image_file(path: str, limit: _ImageLimit) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not os.path.exists(path):
        raise ImageError(f"image file not found: {path!r}; check the path")
    if os.path.isdir(path):
        raise ImageError(f"{path!r} is a folder, not an image file")
    what = f"image {path!r}"
    header_size = _png_header_size(path)
    if header_size is not None:  # PNG: the size check needs no Pillow at all
        _check_size(*header_size, limit, what)
    try:
        # Our own pixel limit (checked from the header, below) replaces Pillow's bomb warning;
        # Pillow's bomb *error* (over 2 x Image.MAX_IMAGE_PIXELS) becomes the same size message.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                # The header gives the size before any pixel is decoded.
                _check_size(img.width, img.height, limit, what)
                img.load()
                return _pil_to_rgb(_exif_upright(img))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(_bomb_message(what, exc, limit)) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageError(f"cannot decode image file {path!r} ({exc}); use a PNG, JPEG, WebP or BMP picture") from exc


def _png_header_size(path: str) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None if the file does not start like a PNG."""
    try:
        with open(path, "rb") as file:
            head = file.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _bomb_message(what: str, exc: Exception, limit: _ImageLimit) -> str:
    """The size message for a picture Pillow refuses as a decompression bomb (pixel count from its text)."""
    from PIL import Image

    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)) / 1e6:.1f} megapixels" if found else "too many pixels"
    pillow_limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None
    if pillow_limit is not None and pillow_limit < limit.pixels:
        return (f"{what} is {size}, above Pillow's limit of {pillow_limit / 1e6:.1f} megapixels. "
                f"Downscale it first (the model works at about 512 px)")
    return f"{what} is {size}, {_over_limit_advice(limit)}"


def _pixel_count(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} megapixels" if pixels >= 100_000 else f"{pixels:,} pixels"


def _over_limit_advice(limit: _ImageLimit) -> str:
    return (f"above the picture-size limit of {_pixel_count(limit.pixels)} ({limit.name}). Downscale it "
            f"first (the model works at about 512 px), or raise {limit.name} if the picture is meant to be this big")


def _check_size(width: int, height: int, limit: _ImageLimit, what: str) -> None:
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageError(f"{what} is {width}x{height} px; both sides must be at least {MIN_IMAGE_SIDE} px. "
                         f"Use a larger portrait (a face of at least about 128 px works best)")
    if width * height > limit.pixels:
        raise ImageError(f"{what} is {width}x{height} = {_pixel_count(width * height)}, {_over_limit_advice(limit)}")


def _exif_upright(img):
    """Apply the EXIF orientation tag (phone photos), so the face is upright."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # a corrupt EXIF block should not make a readable picture unusable
        logger.warning("ignoring an unreadable EXIF orientation tag")
        return img


def _pil_to_rgb(img) -> np.ndarray:
    """Any Pillow mode -> uint8 RGB, without garbling high bit depths or transparency."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit PNG/TIFF data: Pillow's own convert('RGB') would clip to 255 (mostly white).
        return _array_to_rgb(np.asarray(img).astype(np.int64), "the image", integer_max=65535)
    if mode == "F":
        return _array_to_rgb(np.asarray(img, dtype=np.float32), "the image")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        return _composite_over_white(np.asarray(img.convert("RGBA")))
    return np.asarray(img.convert("RGB"))


def _composite_over_white(rgba: np.ndarray) -> np.ndarray:
    """uint8 RGBA -> uint8 RGB over a white background (rounded)."""
    rgb = rgba[..., :3].astype(np.float32)
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    return np.clip(np.rint(rgb * alpha + 255.0 * (1.0 - alpha)), 0, 255).astype(np.uint8)


def _comfy_tensor_to_array(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dim() == 4:
        if tensor.shape[0] < 1:
            raise ImageError("the IMAGE batch is empty")
        if tensor.shape[0] > 1:
            logger.info("IMAGE batch of %d pictures: using the first one", tensor.shape[0])
        tensor = tensor[0]
    if tensor.dim() != 3:
        raise ImageError(f"an IMAGE tensor must be [batch, height, width, channels] or [height, width, channels], "
                         f"got shape {tuple(tensor.shape)}")
    return tensor.detach().to("cpu", torch.float32).numpy()


def _array_to_rgb(array: np.ndarray, what: str, integer_max: int | None = None) -> np.ndarray:
    """numpy picture (HxW, HxWx1, HxWx3, HxWx4; uint8, uint16 or float in [0,1]) -> uint8 RGB."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageError(f"{what} has shape {tuple(array.shape)}; expected height x width (gray), or height x "
                         f"width x 1/3/4 channels (channels last)")
    if array.dtype == np.uint8:
        pixels = array
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError(f"{what} contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < -1e-3 or high > 1 + 1e-3:
            raise ImageError(f"{what} is float with values in [{low:.3g}, {high:.3g}]; float pictures must be in "
                             f"[0, 1] (divide 0..255 data by 255)")
        pixels = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        top = integer_max or (65535 if array.dtype == np.uint16 else 255)
        if array.dtype == np.bool_:
            top = 1
        if array.min() < 0 or array.max() > top:
            raise ImageError(f"{what} has integer values in [{array.min()}, {array.max()}], outside 0..{top}")
        pixels = np.clip(np.rint(array.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
    else:
        raise ImageError(f"{what} has unsupported dtype {array.dtype}; use uint8, uint16 or float in [0, 1]")
    if pixels.shape[2] == 1:
        return np.repeat(pixels, 3, axis=2)
    if pixels.shape[2] == 4:
        return _composite_over_white(pixels)
    return pixels
