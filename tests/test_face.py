"""Portrait loading and preparation: real pictures, real files, and the official arithmetic."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import skimage
import torch
from PIL import Image

from sonic.config import CLIP_MEAN, CLIP_STD
from sonic.errors import FaceNotFoundError, ImageError, ParameterError
from sonic.inputs.image import load_image
from sonic.inputs.portrait import (face_mask_bounds, fit_min_resolution, model_resolution, prepare_portrait,
                        square_crop_box)
from sonic.inputs.face_detectors import FaceBox

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"  # test images shipped with scikit-image
ASTRONAUT = SKIMAGE_DATA / "astronaut.png"
ASTRONAUT_FACE = (177, 66, 272, 161)  # what OpenCV's Haar cascade finds (x, y, w, h = 177, 66, 95, 95)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.asarray(Image.open(ASTRONAUT).convert("RGB"))


@pytest.fixture(scope="module")
def prepared(astronaut):
    return prepare_portrait(ASTRONAUT)


def box_in_model_pixels(portrait, box: FaceBox) -> tuple[float, float, float, float]:
    """A box in original pixels -> model-input pixels."""
    x1, y1, x2, y2 = portrait.crop_box
    sx, sy = portrait.width / (x2 - x1), portrait.height / (y2 - y1)
    return (box.x1 - x1) * sx, (box.y1 - y1) * sy, (box.x2 - x1) * sx, (box.y2 - y1) * sy


# --- the official arithmetic, by hand -------------------------------------------------------------

def test_square_crop_numbers():
    # Astronaut: box 177..272 x 66..161 grows by 47.5 px a side -> 129.5..319.5 x 18.5..208.5, already
    # square. Python's round is half-to-even: 129.5 -> 130, 319.5 -> 320, but 18.5 -> 18, 208.5 -> 208
    # (half-up rounding would give 19 and 209).
    assert square_crop_box(FaceBox(*ASTRONAUT_FACE), 512, 512, 0.5) == (130, 18, 320, 208)
    # A tall box clipped at the left and the top: expanded 0..170 x 0..550, side 170; the centre y
    # moves from 275 toward the face centre 250 by min((550-170)/2, 25) = 25.
    assert square_crop_box(FaceBox(20, 100, 120, 400), 1000, 1000, 0.5) == (0, 165, 170, 335)
    # A wide box: expanded 0..280 x 50..250 (clipped at x=0), side 200; the centre x 140 moves toward
    # the face centre 120 by min((280-200)/2, 20) = 20.
    assert square_crop_box(FaceBox(40, 100, 200, 200), 400, 300, 0.5) == (20, 50, 220, 250)
    # expand_ratio 0: the square of the face's short side, centred on the face.
    assert square_crop_box(FaceBox(10, 10, 50, 30), 100, 100, 0.0) == (20, 10, 40, 30)


def test_face_mask_numbers():
    # w 40.6*1.1 = 44.66, h 60.5*1.1 = 66.55; centre (61.2//2, 101.9//2) = (30, 50); half sizes floor to
    # 22 and 33.
    assert face_mask_bounds(FaceBox(10.3, 20.7, 50.9, 81.2), 100, 100, 1.1) == (8, 17, 52, 83)
    assert face_mask_bounds(FaceBox(0, 0, 40, 40), 100, 100, 1.1) == (0, 0, 42, 42)  # clipped at 0
    assert face_mask_bounds(FaceBox(70, 70, 100, 100), 100, 100, 1.1) == (69, 69, 100, 100)  # clipped at the edge


def test_model_resolution_rounds_half_to_even():
    assert model_resolution(544, 512, 512) == (512, 512)  # 8.5 -> 8 (not 9)
    assert model_resolution(608, 512, 512) == (640, 512)  # 9.5 -> 10
    assert model_resolution(672, 512, 512) == (640, 512)  # 10.5 -> 10
    assert model_resolution(300, 200, 512) == (768, 512)
    assert model_resolution(190, 190, 512) == (512, 512)
    assert model_resolution(200, 600, 512) == (512, 1536)
    assert model_resolution(1000, 700, 96) == (128, 128)  # short side 96/64 = 1.5 -> 2 (even): 128
    assert fit_min_resolution(200, 600, 512, 1024 * 1024) == 512
    # 1:5 at 512 would be 512x2560 = 1.31 MP; 448 gives 448x2240 = 1.00 MP <= 1 MiP.
    assert fit_min_resolution(200, 1000, 512, 1024 * 1024) == 448
    with pytest.raises(ImageError, match="aspect ratio"):
        fit_min_resolution(40, 20000, 512, 64 * 64)


# --- portraits ---------------------------------------------------------------------------------------

def test_astronaut_is_found_and_cropped(prepared, astronaut):
    p = prepared
    x1, y1, x2, y2 = p.crop_box
    assert p.crop_box == (130, 18, 320, 208) and x2 - x1 == y2 - y1  # square, from the Haar box above
    f = p.face_box
    assert x1 <= f.x1 < f.x2 <= x2 and y1 <= f.y1 < f.y2 <= y2  # the face lies inside the crop
    assert 160 < f.x1 < 195 and 255 < f.x2 < 290 and 50 < f.y1 < 85 and 145 < f.y2 < 180
    assert (p.width, p.height) == (512, 512)
    assert p.pixels.shape == (1, 3, 512, 512) and p.pixels.dtype == torch.float32
    assert p.pixels.min() >= -1 and p.pixels.max() <= 1
    assert p.clip_pixels.shape == (1, 3, 224, 224) and p.face_mask.shape == (1, 1, 512, 512)
    assert np.array_equal(p.original, astronaut)
    # The mask is ~1 over the face and 0 far from it.
    mx1, my1, mx2, my2 = (int(v) for v in box_in_model_pixels(p, f))
    assert p.face_mask[0, 0, my1 + 5:my2 - 5, mx1 + 5:mx2 - 5].min() > 0.99
    assert p.face_mask[0, 0, :40, :40].max() == 0 and p.face_mask[0, 0, -40:, -40:].max() == 0
    assert p.face_mask.min() >= 0 and p.face_mask.max() <= 1


def test_pixels_and_clip_follow_the_reference_formulas(astronaut):
    p = prepare_portrait(astronaut, crop=False)  # 512x512 already: no resize
    assert p.crop_box == (0, 0, 512, 512) and (p.width, p.height) == (512, 512)
    expected = torch.from_numpy(astronaut.astype(np.float32)).permute(2, 0, 1)[None] / 255 * 2 - 1
    assert p.pixels.shape == expected.shape and (p.pixels - expected).abs().max() <= 1e-6
    squashed = np.asarray(Image.fromarray(astronaut).resize((224, 224), Image.LANCZOS), np.float64) / 255
    clip = (squashed - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    assert (p.clip_pixels[0].double() - torch.from_numpy(clip).permute(2, 0, 1)).abs().max() <= 1e-6
    # No resize: the mask is exactly the integer rectangle of the reference.
    mx1, my1, mx2, my2 = face_mask_bounds(p.face_box, 512, 512, 1.1)
    mask = p.face_mask[0, 0]
    assert mask[my1:my2, mx1:mx2].min() == 1 and mask.sum() == (mx2 - mx1) * (my2 - my1)


def test_given_face_box_skips_detection(astronaut):
    p = prepare_portrait(astronaut, face_box=ASTRONAUT_FACE)
    assert p.crop_box == (130, 18, 320, 208)
    assert p.face_box.as_tuple() == ASTRONAUT_FACE
    as_text = prepare_portrait(astronaut, face_box=" 177, 66,272,161 ")  # CLI / text-widget form
    assert as_text.crop_box == p.crop_box and torch.equal(as_text.pixels, p.pixels)
    # A box on a picture without any face works too (nothing is detected).
    cat = SKIMAGE_DATA / "chelsea.png"
    q = prepare_portrait(cat, face_box=(140, 40, 260, 170), crop=False)
    assert q.face_box.as_tuple() == (140, 40, 260, 170) and q.crop_box == (0, 0, 451, 300)
    assert (q.width, q.height) == (768, 512)  # 451x300 * 512/300 = 769.7 -> 12.03 -> 768


@pytest.mark.parametrize("bad", [(0, 0, 600, 100), (50, 50, 40, 90), (1, 2, 3), "face", (-1, 0, 10, 10),
                                 (0, 0, float("nan"), 10)])
def test_bad_face_box_is_a_parameter_error(astronaut, bad):
    with pytest.raises(ParameterError, match="face_box"):
        prepare_portrait(astronaut, face_box=bad)


def test_tiny_face_box_crop_is_refused(astronaut):
    with pytest.raises(ParameterError, match="crop of only"):
        prepare_portrait(astronaut, face_box=(100, 100, 104, 104))
    assert prepare_portrait(astronaut, face_box=(100, 100, 104, 104), crop=False).width == 512


def test_face_index_picks_faces_left_to_right(astronaut):
    pair = np.concatenate([astronaut, astronaut[:, ::-1]], axis=1)  # two faces: x ~225 and x ~800
    left = prepare_portrait(pair, face_index=0)
    right = prepare_portrait(pair, face_index=1)
    assert left.face_box.center[0] < 400 and left.crop_box[2] <= 512
    assert right.face_box.center[0] > 600 and right.crop_box[0] >= 512
    with pytest.raises(ParameterError, match=r"2 face\(s\)"):
        prepare_portrait(pair, face_index=2)
    with pytest.raises(ParameterError, match="either face_box or face_index"):
        prepare_portrait(pair, face_index=0, face_box="full")


@pytest.mark.parametrize("index", ["0", 0.5, 1.0, True])
def test_face_index_must_be_a_whole_number(astronaut, index):
    with pytest.raises(ParameterError, match="face_index must be a whole number"):
        prepare_portrait(astronaut, face_index=index)


@pytest.mark.parametrize("name", ["chelsea.png", "coffee.png"])
def test_no_face_names_the_three_ways_out(name):
    with pytest.raises(FaceNotFoundError) as info:
        prepare_portrait(SKIMAGE_DATA / name)
    message = str(info.value)
    assert "no face found" in message
    assert "another picture" in message
    assert "face_box=(x1, y1, x2, y2)" in message and "--face-box" in message
    assert 'face_box="full"' in message and "--face-box full" in message


def test_full_mode_uses_the_whole_picture():
    p = prepare_portrait(SKIMAGE_DATA / "coffee.png", face_box="full")  # 600x400, no face at all
    assert p.crop_box == (0, 0, 600, 400) and p.face_box.as_tuple() == (0, 0, 600, 400)
    assert (p.width, p.height) == (768, 512)  # 600*512/400 = 768
    assert p.face_mask.min() == 1


@pytest.mark.parametrize("shape", [(600, 200), (200, 600)])
def test_one_to_three_pictures(astronaut, shape):
    height, width = shape
    canvas = np.full((height, width, 3), 128, np.uint8)
    face = np.asarray(Image.fromarray(astronaut).resize((200, 200), Image.LANCZOS))
    canvas[:200, :200] = face
    cropped = prepare_portrait(canvas)  # detected (Haar) on the padded canvas
    x1, y1, x2, y2 = cropped.crop_box
    assert abs((x2 - x1) - (y2 - y1)) <= 1 and x2 <= width and y2 <= height
    assert cropped.width % 64 == 0 and cropped.height % 64 == 0 and cropped.width == cropped.height == 512
    whole = prepare_portrait(canvas, crop=False)
    assert (whole.width, whole.height) == ((512, 1536) if width < height else (1536, 512))
    assert whole.pixels.shape[-2:] == (whole.height, whole.width) == whole.face_mask.shape[-2:]


def test_max_pixels_lowers_the_resolution_with_a_warning(astronaut):
    tall = np.full((1000, 200, 3), 128, np.uint8)
    tall[:200] = np.asarray(Image.fromarray(astronaut).resize((200, 200), Image.LANCZOS))
    with pytest.warns(UserWarning, match="max_pixels"):
        p = prepare_portrait(tall, face_box="full")
    assert (p.width, p.height, p.min_resolution) == (448, 2240, 448)


def test_preparation_is_deterministic(prepared):
    again = prepare_portrait(ASTRONAUT)
    assert torch.equal(again.pixels, prepared.pixels) and torch.equal(again.face_mask, prepared.face_mask)
    assert torch.equal(again.clip_pixels, prepared.clip_pixels) and again.crop_box == prepared.crop_box


# --- loading -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,tolerance", [("png", 0), ("bmp", 0), ("jpeg", 24), ("webp", 24)])
def test_formats(astronaut, tmp_path, fmt, tolerance):
    small = np.asarray(Image.fromarray(astronaut).resize((64, 48)))
    path = tmp_path / f"portrait.{fmt}"
    Image.fromarray(small).save(path)
    loaded = load_image(path)
    assert loaded.shape == (48, 64, 3) and loaded.dtype == np.uint8
    assert np.abs(loaded.astype(int) - small).mean() <= tolerance / 3


def test_rgba_is_composited_over_white(tmp_path):
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 1] = 255  # fully transparent green: must not show
    rgba[10:30, 10:30] = (200, 30, 40, 255)  # opaque red square
    rgba[0:5, 0:5] = (0, 0, 0, 128)  # half-transparent black over white -> mid gray
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    for source in (path, rgba):
        rgb = load_image(source)
        assert rgb.shape == (40, 40, 3)
        assert (rgb[35, 35] == 255).all()
        assert tuple(rgb[20, 20]) == (200, 30, 40)
        assert np.abs(rgb[2, 2].astype(int) - 127).max() <= 1


def test_palette_and_gray_alpha_transparency(tmp_path):
    gray_alpha = Image.fromarray(np.stack([np.full((40, 40), 50, np.uint8), np.zeros((40, 40), np.uint8)], -1), "LA")
    gray_alpha.putpixel((5, 5), (50, 255))
    path = tmp_path / "la.png"
    gray_alpha.save(path)
    rgb = load_image(path)
    assert (rgb[0, 0] == 255).all() and (rgb[5, 5] == 50).all()
    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    palette.paste(1, (10, 10, 20, 20))
    palette.info["transparency"] = 0
    path = tmp_path / "p.png"
    palette.save(path, transparency=0)
    rgb = load_image(path)
    assert (rgb[0, 0] == 255).all() and tuple(rgb[15, 15]) == (250, 10, 10)


def test_grayscale_and_16_bit(tmp_path):
    gray = (np.arange(48 * 64).reshape(48, 64) % 256).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    loaded = load_image(tmp_path / "gray.png")
    assert loaded.shape == (48, 64, 3) and (loaded == gray[..., None]).all()
    deep = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)  # 0..64491
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    loaded = load_image(tmp_path / "deep.png")
    expected = np.rint(deep / 257.0).astype(np.uint8)
    assert (loaded == expected[..., None]).all()  # not clipped to white


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((40, 64, 3), np.uint8)  # 64 wide, 40 high as stored
    stored[:20] = (255, 0, 0)  # top half red
    stored[20:] = (0, 0, 255)  # bottom half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    shown = load_image(path)
    assert shown.shape == (64, 40, 3)  # upright: 40 wide, 64 high
    assert shown[32, 35, 0] > 200 and shown[32, 35, 2] < 60  # the stored top is now on the right
    assert shown[32, 4, 2] > 200 and shown[32, 4, 0] < 60


def test_arrays_and_comfy_tensors(astronaut):
    small = np.asarray(Image.fromarray(astronaut).resize((64, 48)))
    as_float = small.astype(np.float32) / 255
    assert np.array_equal(load_image(as_float), small)
    batch = torch.from_numpy(np.stack([as_float, 1 - as_float]))  # ComfyUI IMAGE [B, H, W, C]
    assert np.array_equal(load_image(batch), small)  # image 0
    assert np.array_equal(load_image(batch[1]), 255 - small)  # [H, W, C]
    assert np.array_equal(load_image(small[..., 0]), np.repeat(small[..., :1], 3, axis=2))
    assert np.array_equal(load_image(Image.fromarray(small)), small)
    assert np.array_equal(load_image(small.astype(np.uint16) * 257), small)


@pytest.mark.parametrize("source,match", [
    (np.zeros((20, 100, 3), np.uint8), r"20 px|100x20"),
    (np.full((40, 40, 3), 2.0, np.float32), r"\[0, 1\]"),
    (np.zeros((40, 40, 2), np.uint8), "channels"),
    (torch.zeros(1, 3, 64, 64), "channels"),
    (12, "cannot use a int"),
])
def test_bad_arrays_are_image_errors(source, match):
    with pytest.raises(ImageError, match=match):
        load_image(source)


def test_bad_files_are_image_errors_naming_the_file(tmp_path):
    with pytest.raises(ImageError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not a picture")
    with pytest.raises(ImageError, match="junk.png"):
        load_image(junk)
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match=r"512x512 = 0\.3 megapixels.*raise max_image_pixels"):
        load_image(ASTRONAUT, max_image_pixels=100_000)
    Image.fromarray(np.zeros((20, 200, 3), np.uint8)).save(tmp_path / "strip.png")
    with pytest.raises(ImageError, match="200x20 px"):
        load_image(tmp_path / "strip.png")
    assert math.isclose(load_image(ASTRONAUT).mean(), np.asarray(Image.open(ASTRONAUT).convert("RGB")).mean())


def test_decompression_bombs_get_the_size_message(tmp_path, monkeypatch):
    """A PNG whose header claims 100000x100000 px, and a picture over Pillow's own bomb limit: size, not 'cannot decode'."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    with pytest.raises(ImageError, match=r"100000x100000 = 10000\.0 megapixels.*Downscale") as info:
        load_image(huge)
    assert "cannot decode" not in str(info.value)
    jpeg = tmp_path / "astronaut.jpg"
    Image.open(ASTRONAUT).convert("RGB").save(jpeg)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # Pillow now calls 512x512 a bomb (over 200_000)
    with pytest.raises(ImageError, match=r"is 0\.3 megapixels, above Pillow's limit of 0\.2 megapixels\. Downscale"):
        load_image(jpeg)
    with pytest.raises(ImageError, match=r"is 0\.3 megapixels, above the picture-size limit of 0\.1 megapixels "
                                         r"\(max_image_pixels\).*raise max_image_pixels"):
        load_image(jpeg, max_image_pixels=120_000)


def test_picture_size_limit_is_its_own_setting(tmp_path):
    """49 MP is over the 40 MP default of max_image_pixels (not max_pixels, the model-input cap); raising it works."""
    from sonic.config import SonicConfig

    huge = tmp_path / "huge.png"
    Image.new("L", (7000, 7000), 128).save(huge, compress_level=1)  # a flat grey picture compresses to ~50 kB
    with pytest.raises(ImageError) as info:
        prepare_portrait(huge, face_box="full", min_resolution=64)
    message = str(info.value)
    assert "7000x7000 = 49.0 megapixels, above the picture-size limit of 40.0 megapixels (max_image_pixels)" in message
    assert "raise max_image_pixels" in message and "raise max_pixels" not in message
    prepared = prepare_portrait(huge, face_box="full", min_resolution=64, max_image_pixels=50_000_000)
    assert (prepared.width, prepared.height) == (64, 64) and prepared.original.shape == (7000, 7000, 3)
    assert SonicConfig().max_image_pixels == 40_000_000
    with pytest.raises(ParameterError, match="max_image_pixels must be at least 4096"):
        SonicConfig().replace(max_image_pixels=100)
    with pytest.raises(ParameterError, match="max_image_pixels must be a whole number"):
        load_image(huge, max_image_pixels=1.5e7)
