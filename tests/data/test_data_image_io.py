"""decode_image: every pixel format converted, every bad input refused with its reason."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from components.data.image_io import BadImageError, decode_image, preprocess, resize_whole
from components.data.patchify import unpatchify
from tests.data.conftest import encode, painted, png_with_header_size


def _rgb() -> Image.Image:
    return Image.fromarray(painted()[0])


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("P", "GIF"),
                                      ("CMYK", "JPEG"), ("LA", "PNG"), ("1", "PNG")])
def test_modes_become_rgb_uint8(mode, fmt):
    out = decode_image(encode(_rgb().convert(mode), fmt))
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8


def test_sixteen_bit_keeps_the_top_byte():
    gray = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)
    out = decode_image(encode(Image.fromarray(gray), "PNG"))
    assert out.shape == (48, 64, 3)
    assert np.array_equal(out[..., 0], (gray >> 8).astype(np.uint8))
    assert np.array_equal(out[..., 0], out[..., 2])


def test_rgba_transparent_pixels_become_white():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4, :, :] = (200, 10, 10, 255)  # top half opaque red, bottom fully transparent
    out = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert tuple(out[0, 0]) == (200, 10, 10) and tuple(out[7, 7]) == (255, 255, 255)


def test_exif_orientation_is_applied():
    left_red = np.zeros((40, 60, 3), np.uint8)
    left_red[:, :30] = (255, 0, 0)
    left_red[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise: the left half ends on top
    out = decode_image(encode(Image.fromarray(left_red), "PNG", exif=exif))
    assert out.shape == (60, 40, 3)
    assert out[5, 20, 0] > 200 and out[55, 20, 2] > 200


@pytest.mark.parametrize("data,reason", [
    (b"", "empty file"),
    (b"plain text, not pixels" * 10, "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image"),  # PNG magic, broken header
])
def test_bad_bytes(data, reason):
    with pytest.raises(BadImageError) as err:
        decode_image(data)
    assert err.value.reason.startswith(reason)


def test_truncated_jpeg_and_png():
    for fmt in ("JPEG", "PNG"):
        data = encode(_rgb(), fmt)
        with pytest.raises(BadImageError, match="truncated or corrupt"):
            decode_image(data[: len(data) * 2 // 3])


def test_pixel_limit_checked_before_decoding():
    # Header says 30000 x 30000, the body is 1 pixel: decoding would say "truncated".
    with pytest.raises(BadImageError, match="too many pixels"):
        decode_image(png_with_header_size(30000, 30000), max_pixels=10_000_000)
    with pytest.raises(BadImageError, match="too many pixels"):
        decode_image(encode(_rgb(), "PNG"), max_pixels=64 * 48 - 1)
    assert decode_image(encode(_rgb(), "PNG"), max_pixels=64 * 48).shape == (48, 64, 3)


def test_preprocess_resizes_the_whole_image_and_patchifies():
    image, _ = painted(64, 48)
    patches, grid = preprocess(image, image_size=32, patch_size=16)
    assert patches.shape == (4, 768) and patches.dtype == np.uint8 and grid == (2, 2)
    assert np.array_equal(unpatchify(patches, grid, 16), resize_whole(image, 32))
    with pytest.raises(ValueError):
        preprocess(image, image_size=40, patch_size=16)
    with pytest.raises(ValueError):
        preprocess(image.astype(np.float32), image_size=32, patch_size=16)
