"""Reduced-size JPEG decoding: sizes never below the request, pixels close to a full decode,
nothing shifted, and boxes through the reduced path equal to the full path's."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from benchmarks.bench_decode import photo_jpeg
from components.data.config import AugmentConfig
from components.data.dataset import RowSpec, make_rows
from components.data.fs import Location
from components.data.image_io import BadImageError, decode_at_size, decode_image, resize_whole
from components.data.transforms import ImageTransform
from tests.data.conftest import BCCD_VOC, encode

W, H = 2048, 1371  # H is odd: no reduced scale divides it


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return photo_jpeg(W, H, seed=1)


@pytest.mark.parametrize("want,scale", [((96, 96), 8), ((224, 224), 4), ((300, 200), 4),
                                        ((600, 600), 2), ((1100, 700), 1), ((4000, 4000), 1)])
def test_reduced_size_is_the_smallest_scale_not_below_the_request(big_jpeg, want, scale):
    rgb, full = decode_at_size(big_jpeg, want)
    assert full == (H, W)
    assert rgb.shape == (math.ceil(H / scale), math.ceil(W / scale), 3)
    if scale > 1:
        assert rgb.shape[1] >= want[0] and rgb.shape[0] >= want[1]


@pytest.mark.parametrize("size", [96, 224])
def test_reduced_decode_is_close_to_full_decode_and_resize(big_jpeg, size):
    full = resize_whole(decode_image(big_jpeg), size).astype(np.int16)
    reduced = resize_whole(decode_at_size(big_jpeg, (size, size))[0], size).astype(np.int16)
    assert np.abs(full - reduced).mean() < 1.5


def test_bccd_photograph_is_close_too():
    data = (BCCD_VOC / "JPEGImages" / "BloodImage_00000.jpg").read_bytes()
    rgb, full = decode_at_size(data, (96, 96))
    assert full == (480, 640) and rgb.shape == (120, 160, 3)
    diff = resize_whole(rgb, 96).astype(np.int16) - resize_whole(decode_image(data), 96)
    assert np.abs(diff).mean() < 1.5


def test_content_is_not_shifted_at_the_far_edges():
    """A bright square in the bottom-right corner of an image whose sides the scale does not
    divide: its centre lands on the same model pixel with either decode."""
    image = np.full((H, W, 3), 40, np.uint8)
    image[H - 200:H - 40, W - 220:W - 60] = 230
    data = encode(Image.fromarray(image), "JPEG", quality=95)

    def centre(rgb: np.ndarray) -> np.ndarray:
        small = resize_whole(rgb, 224)[..., 0].astype(np.float64)
        weights = np.clip(small - 40, 0, None)
        ys, xs = np.mgrid[0:224, 0:224]
        return np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum()

    reduced, _ = decode_at_size(data, (224, 224))
    assert reduced.shape[:2] == (math.ceil(H / 4), W // 4)
    assert np.abs(centre(reduced) - centre(decode_image(data))).max() < 0.05  # model pixels


def test_exif_rotation_and_other_formats():
    photo = np.asarray(Image.open(io.BytesIO(photo_jpeg(803, 601, seed=2))))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated: 601 wide, 803 high
    rotated = encode(Image.fromarray(photo), "JPEG", quality=92, exif=exif)
    rgb, full = decode_at_size(rotated, (150, 200))  # displayed (width, height)
    assert full == (803, 601) and rgb.shape == (201, 151, 3)  # 1/4, edges resampled
    diff = resize_whole(rgb, 96).astype(np.int16) - resize_whole(decode_image(rotated), 96)
    assert np.abs(diff).mean() < 1.5
    png = encode(Image.fromarray(photo), "PNG")
    assert decode_at_size(png, (100, 100))[0].shape == (601, 803, 3)  # only JPEG reduces


def test_bad_jpegs_are_still_refused(big_jpeg):
    with pytest.raises(BadImageError, match="truncated or corrupt"):
        decode_at_size(big_jpeg[: len(big_jpeg) // 2], (96, 96))
    with pytest.raises(BadImageError, match="too many pixels"):
        decode_at_size(big_jpeg, (96, 96), max_pixels=W * H - 1)  # the full size counts


def test_transforms_ask_for_the_size_they_use():
    aug = AugmentConfig()
    evaluate = ImageTransform(task="detection", training=False, image_size=96)
    train = ImageTransform(task="detection", training=True, image_size=96, augment=aug)
    assert evaluate.min_decode_size(W, H) == (96, 96)
    assert train.min_decode_size(W, H) == (384, math.ceil(H * 384 / W))  # pre-shrink: 4 x S
    assert train.min_decode_size(300, 200) == (300, 200)


@pytest.mark.parametrize("training", [False, True])
def test_boxes_through_the_reduced_path_equal_the_full_path(tmp_path, big_jpeg, training):
    (tmp_path / "big.jpg").write_bytes(big_jpeg)
    boxes = [[0.0, 0.0, 300.5, 200.0], [1500.25, 1000.0, 547.75, 371.0], [900.0, 40.0, 64.0, 1300.0]]
    batch = {"image_id": np.array([7]), "file": np.array(["big.jpg"], dtype=object),
             "boxes": [np.array(boxes, np.float32).ravel()], "classes": [np.array([0, 1, 2])]}
    rows = {}
    for reduced in (False, True):
        spec = RowSpec(images=Location.from_uri(str(tmp_path)), task="detection",
                       training=training, image_size=96, patch_size=16, max_boxes=8,
                       max_pixels=40_000_000, augment=AugmentConfig(min_visibility=0.0),
                       seed=3, epoch=0, reduced_decode=reduced)
        rows[reduced] = make_rows(batch, spec)
    full, reduced = rows[False], rows[True]
    assert full["orig_size"].tolist() == reduced["orig_size"].tolist() == [[H, W]]
    assert np.array_equal(full["box_mask"], reduced["box_mask"]) and full["box_mask"].sum() >= 1
    assert np.array_equal(full["classes"], reduced["classes"])
    scale = np.array([W, H, W, H], np.float64)  # normalised → original pixels
    assert np.abs((full["boxes"] - reduced["boxes"]) * scale).max() < 0.5
    assert np.abs(full["patches"].astype(np.int16) - reduced["patches"]).mean() < 2.0
