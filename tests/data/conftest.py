"""Data-stage fixtures: a COCO dataset holding every kind of bad input, with its expectations."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_with_header_size(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width × height`` but whose pixel data is a 1×1 image.

    Decoding it would fail as truncated; a pixel-limit check done on the header first
    reports "too many pixels" instead — which proves the check comes before decoding.
    """
    data = encode(Image.new("L", (1, 1)), "PNG")
    ihdr_at = data.index(b"IHDR")
    body = struct.pack(">II", width, height) + data[ihdr_at + 12:ihdr_at + 17]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + body) & 0xFFFFFFFF)
    return data[:ihdr_at + 4] + body + crc + data[ihdr_at + 21:]


def painted(width: int = 64, height: int = 48) -> tuple[np.ndarray, list[float]]:
    """A dark image with one bright rectangle and its COCO xywh box."""
    image = np.full((height, width, 3), 30, np.uint8)
    x, y, w, h = 10, 8, 20, 14
    image[y:y + h, x:x + w] = (250, 240, 40)
    return image, [float(x), float(y), float(w), float(h)]


# file name → reason it must be skipped with (None: accepted)
EXPECTED_FILES = {
    "good.jpg": None,
    "gray.png": None,
    "rgba.png": None,
    "gray16.png": None,
    "palette.png": None,
    "exif_rotated.jpg": None,  # stored 48x64 (w x h) after rotation: accepted
    "exif_wrong_size.jpg": "stored size",
    "corrupt.jpg": "not an image",
    "truncated.jpg": "truncated or corrupt image",
    "empty.jpg": "empty file",
    "notes.png": "not an image",
    "missing.jpg": "missing file",
    "bomb.png": "too many pixels",
    "../escape.jpg": "file name escapes the image root",
    "/etc/passwd": "file name escapes the image root",
}


@pytest.fixture(scope="session")
def bad_coco(tmp_path_factory) -> dict:
    """A COCO split with every bad-input kind; returns paths and expectations."""
    root = tmp_path_factory.mktemp("badcoco")
    images = root / "images"
    images.mkdir()
    rgb, box = painted()
    pil = Image.fromarray(rgb)
    jpeg = encode(pil, "JPEG", quality=95)
    ex = Image.Exif()
    ex[0x0112] = 6  # rotate 90° clockwise on display: 64x48 stored → 48x64 shown
    files = {
        "good.jpg": jpeg,
        "gray.png": encode(pil.convert("L"), "PNG"),
        "rgba.png": encode(pil.convert("RGBA"), "PNG"),
        "gray16.png": encode(Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), "PNG"),
        "palette.png": encode(pil.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG"),
        "exif_rotated.jpg": encode(pil, "JPEG", exif=ex),
        "exif_wrong_size.jpg": encode(pil, "JPEG", exif=ex),
        "corrupt.jpg": bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8)),
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "empty.jpg": b"",
        "notes.png": b"these are not pixels\n" * 20,
        "bomb.png": png_with_header_size(30000, 30000),
    }
    for name, data in files.items():
        (images / name).write_bytes(data)
    (root / "escape.jpg").write_bytes(jpeg)  # exists, but outside the image root

    coco_images = []
    for k, name in enumerate(EXPECTED_FILES, start=1):
        w, h = (48, 64) if name == "exif_rotated.jpg" else (64, 48)
        coco_images.append({"id": k, "file_name": name, "width": w, "height": h})
    good_id = 1
    x, y, w, h = box
    anns = [
        {"id": 101, "image_id": good_id, "category_id": 7, "bbox": box},  # accepted
        {"id": 102, "image_id": good_id, "category_id": 3, "bbox": [50, 30, 30, 30]},  # clipped
        {"id": 103, "image_id": 999, "category_id": 3, "bbox": box},  # unknown image
        {"id": 104, "image_id": good_id, "category_id": 42, "bbox": box},  # unknown category
        {"id": 105, "image_id": good_id, "category_id": 3, "bbox": [x, y, float("nan"), h]},
        {"id": 106, "image_id": good_id, "category_id": 3, "bbox": [x, y, -5, h]},
        {"id": 107, "image_id": good_id, "category_id": 3, "bbox": [x, y, 0, h]},
        {"id": 108, "image_id": good_id, "category_id": 3, "bbox": [100, 100, 5, 5]},  # outside
        {"id": 109, "image_id": good_id, "category_id": 3, "bbox": [1, 2, 3]},  # malformed
        {"id": 110, "image_id": 2, "category_id": 3, "bbox": box},  # on gray.png, accepted
        {"id": 111, "image_id": 14, "category_id": 3, "bbox": box},  # on ../escape.jpg
    ]
    coco = {"images": coco_images, "annotations": anns,
            "categories": [{"id": 7, "name": "sign"}, {"id": 3, "name": "lamp"}]}
    # json.dumps writes NaN for float("nan"), as many real exporters do.
    ann_path = root / "instances.json"
    ann_path.write_text(json.dumps(coco))
    return {
        "root": root, "annotations": ann_path, "images": images,
        "expected_files": EXPECTED_FILES,
        "expected_annotations": {
            103: "unknown image id", 104: "unknown category id", 105: "non-finite box",
            106: "negative-size box", 107: "zero-size box", 108: "box outside the image",
            109: "malformed box", 111: "its image was skipped",
        },
        "accepted_annotations": {101, 102, 110},
        "good_box": box,
    }


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    """A very small synthetic dataset (64 px) for fast Ray tests."""
    from components.data.synth import SynthConfig, synthesize

    return synthesize(tmp_path_factory.mktemp("tinysynth"),
                      SynthConfig(seed=3, num_train=24, num_val=8, image_size=64))


# The real BCCD photographs (Pascal VOC, MIT license; read-only: copies go to tmp): the
# project's shared data folder beside the checkout (``VITPIPE_BCCD`` points elsewhere).
def _bccd_root() -> Path:
    if os.environ.get("VITPIPE_BCCD"):
        return Path(os.environ["VITPIPE_BCCD"])
    beside = Path(__file__).resolve().parents[3] / "shared" / "data" / "bccd"
    return beside if beside.is_dir() else Path("/work/shared/data/bccd")


BCCD = _bccd_root()
BCCD_VOC = BCCD / "BCCD"


def copy_bccd(dest: Path, splits: dict[str, int]) -> Path:
    """The first ``n`` ids of each BCCD split copied into a VOC folder under ``dest`` (with
    the dataset's LICENSE); returns that folder."""
    import shutil

    root = dest / "BCCD"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(BCCD / "LICENSE", dest / "LICENSE")
    for split, n in splits.items():
        ids = (BCCD_VOC / "ImageSets" / "Main" / f"{split}.txt").read_text().split()[:n]
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i in ids:
            shutil.copy(BCCD_VOC / "Annotations" / f"{i}.xml", root / "Annotations")
            shutil.copy(BCCD_VOC / "JPEGImages" / f"{i}.jpg", root / "JPEGImages")
    return root


@pytest.fixture(scope="session")
def bccd_small(tmp_path_factory) -> Path:
    """A few real BCCD photographs in VOC layout: 6 train and 3 val images."""
    return copy_bccd(tmp_path_factory.mktemp("bccd"), {"train": 6, "val": 3})
