"""Bytes → RGB pixels → patches: the one decode and the one eval transform.

``decode_image`` turns encoded bytes into an RGB uint8 ``[H, W, 3]`` array with EXIF
orientation applied and every other pixel format (grayscale, RGBA, 16-bit, palette, CMYK)
converted; it refuses empty, non-image, truncated and oversized input with a
:class:`BadImageError` whose ``reason`` is a short, countable phrase. The pixel limit is
checked from the header, before any pixel is decoded (decompression bombs cost nothing).

``decode_at_size`` is the same decode for an image that will be shrunk anyway: a JPEG much
larger than what the caller needs is decoded by libjpeg at 1/2, 1/4 or 1/8 scale (Pillow's
``Image.draft``: the smallest of these that keeps each side >= the requested size), which
skips most of the decoding work. The reduced image is an exact scaled copy of the whole
picture (``(w', h') = ceil((W, H) / scale)``, edge pixels resampled so that nothing is
shifted), so boxes in original pixels map to it by ``w' / W`` and ``h' / H`` and normalised
boxes need no change.

``preprocess`` is the eval transform shared by the val dataset, promotion and serving:
the WHOLE image is resized to ``image_size × image_size`` (no crop, no pad) and
patchified, so normalised boxes map back to the original pixels by a plain scale.
"""

from __future__ import annotations

import io
import warnings
from typing import Callable

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from components.data.patchify import patchify

DEFAULT_MAX_PIXELS = 40_000_000

# Pillow modes holding more than 8 bits per channel.
_WIDE_GRAY_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class BadImageError(ValueError):
    """Bytes that cannot become an image; ``reason`` is the phrase counted in skip reports."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def image_size_of(data: bytes) -> tuple[int, int]:
    """``(width, height)`` as displayed (EXIF rotation applied) from the header only."""
    with _open(data) as im:
        w, h = im.size
        if _exif_swaps_axes(im):
            w, h = h, w
        return w, h


def _open(data: bytes) -> Image.Image:
    if not data:
        raise BadImageError("empty file")
    try:
        # Our own pixel limit is checked next, from the header; a damaged header's other
        # warnings (a TIFF tag past the end, ...) would only flood the worker logs: such a
        # file is refused and counted when it is decoded.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImageError("not an image") from None
    except Image.DecompressionBombError:  # Pillow's own guard, far above any sane limit
        raise BadImageError("too many pixels") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImageError(f"truncated or corrupt image ({err})") from None


def _exif_swaps_axes(im: Image.Image) -> bool:
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block is ignored, as Pillow's exif_transpose does
        return False
    return orientation in (5, 6, 7, 8)


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode → RGB uint8 ``[H, W, 3]``."""
    if im.mode in _WIDE_GRAY_MODES:
        arr = np.asarray(im)
        if im.mode == "F":
            gray = np.clip(arr, 0, 255).astype(np.uint8)
        else:  # 16-bit (or 32-bit integer) grey: keep the top 8 of 16 bits
            gray = np.clip(arr.astype(np.int64) >> 8, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels are composited over white.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8)


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded bytes → RGB uint8 ``[H, W, 3]`` (EXIF orientation applied).

    Raises:
        BadImageError: ``reason`` one of "empty file", "not an image", "too many pixels
        (W x H > limit)", "truncated or corrupt image (...)".
    """
    return decode_at_size(data, None, max_pixels=max_pixels)[0]


# (width, height) of the whole displayed image → the smallest (width, height) wanted.
SizeRequest = Callable[[int, int], tuple[int, int]]


def decode_at_size(data: bytes, min_size: tuple[int, int] | SizeRequest | None, *,
                   max_pixels: int = DEFAULT_MAX_PIXELS
                   ) -> tuple[np.ndarray, tuple[int, int]]:
    """Encoded bytes → ``(RGB uint8 [h', w', 3], (H, W))``, EXIF orientation applied.

    ``(H, W)`` is the whole image's displayed size. ``min_size`` (displayed ``(width,
    height)``, or a function of ``(W, H)`` giving it) lets a JPEG decode at the smallest
    1/2, 1/4 or 1/8 scale whose sides are all >= it; ``w' = ceil(W / scale)``,
    ``h' = ceil(H / scale)`` and the picture is an exact scaled copy of the whole one (see
    the module docs). Other formats, ``None`` and sizes that allow no reduction decode in
    full (``(h', w') == (H, W)``). The pixel limit applies to the full size, from the header.

    Raises:
        BadImageError: as :func:`decode_image`.
    """
    with _open(data) as im:
        w, h = im.size
        if w <= 0 or h <= 0:
            raise BadImageError("zero-size image")
        if w * h > max_pixels:
            raise BadImageError(f"too many pixels ({w}x{h} > {max_pixels})")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                swap = _exif_swaps_axes(im)
                full_w, full_h = (h, w) if swap else (w, h)
                if min_size is not None and im.format == "JPEG":
                    want = min_size(full_w, full_h) if callable(min_size) else min_size
                    im = _draft(im, want[::-1] if swap else want)
                im.load()
                im = ImageOps.exif_transpose(im)
                rgb = _to_rgb(im)
        except BadImageError:
            raise
        except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ...
            raise BadImageError(f"truncated or corrupt image ({err})") from None
    return np.ascontiguousarray(rgb), (full_h, full_w)


def _draft(im: Image.Image, want: tuple[int, int]) -> Image.Image:
    """Ask libjpeg for a reduced decode of ``im`` (stored orientation) with sides >= ``want``.

    libjpeg's reduced image is ``ceil(W / s) × ceil(H / s)`` whose last column/row is only
    partly inside the picture (``W / s`` is fractional); it is resampled from the exact
    box ``(0, 0, W / s, H / s)`` to the same size so that the result is the whole picture
    scaled by ``ceil(W / s) / W`` (and likewise for ``H``), with no shift of the content.
    """
    w, h = im.size
    want_w, want_h = max(1, int(want[0])), max(1, int(want[1]))
    if w // want_w < 2 or h // want_h < 2:
        return im  # no 1/2 scale keeps both sides large enough
    drafted = im.draft(im.mode, (want_w, want_h))
    if drafted is None or im.size == (w, h):
        return im
    _, box = drafted  # (0, 0, W / s, H / s) in the reduced image's pixels
    if box[2] == im.size[0] and box[3] == im.size[1]:
        return im  # the scale divides both sides: already exact
    im.load()
    return im.resize(im.size, Image.Resampling.BILINEAR, box=box)


def resize_whole(image_rgb: np.ndarray, image_size: int) -> np.ndarray:
    """The whole image → ``[image_size, image_size, 3]`` (area filter down, linear up)."""
    h, w = image_rgb.shape[:2]
    if (h, w) == (image_size, image_size):
        return image_rgb
    shrink = h * w > image_size * image_size
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image_rgb, (image_size, image_size), interpolation=interp)


def preprocess(image_rgb: np.ndarray, *, image_size: int, patch_size: int
               ) -> tuple[np.ndarray, tuple[int, int]]:
    """Eval transform: RGB uint8 ``[H, W, 3]`` → ``(patches [N, P*P*3] uint8, (gh, gw))``.

    ``N = (image_size / P)²``; the whole image is resized (no crop, no pad).
    """
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"expected RGB uint8 [H, W, 3], got {image_rgb.dtype} {image_rgb.shape}")
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    resized = resize_whole(image_rgb, image_size)
    patches, grid = patchify(np.ascontiguousarray(resized), patch_size)
    return patches, grid
