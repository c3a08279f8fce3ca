"""The synthetic dataset: byte-identical per seed, valid COCO, boxes on painted objects."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from components.data.image_io import decode_image
from components.data.synth import CLASS_NAMES, SynthConfig, synthesize

TINY = dict(num_train=6, num_val=3, image_size=64)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_byte_identical_other_seed_differs(tmp_path):
    a = _digests(synthesize(tmp_path / "a", SynthConfig(seed=5, **TINY)))
    b = _digests(synthesize(tmp_path / "b", SynthConfig(seed=5, **TINY)))
    c = _digests(synthesize(tmp_path / "c", SynthConfig(seed=6, **TINY)))
    assert a == b
    assert len(a) > 9 + 2
    assert a != c


def test_worker_processes_write_the_same_bytes(tmp_path):
    """Rendering in several processes (chunks of images each) changes no file and no id."""
    cfg = SynthConfig(seed=5, num_train=260, num_val=3, image_size=48)  # two chunks of train
    one = _digests(synthesize(tmp_path / "one", cfg))
    two = _digests(synthesize(tmp_path / "two", cfg, workers=2))
    assert one == two
    assert sum(name.startswith("images/train/") for name in one) == 260


def test_layout_and_coco_validity(synth_dataset):
    for split, n in (("train", 48), ("val", 16)):
        ann = synth_dataset / "annotations" / f"instances_{split}.json"
        coco = COCO(str(ann))
        assert len(coco.getImgIds()) == n
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASS_NAMES)
        files = {p.name for p in (synth_dataset / "images" / split).iterdir()}
        assert {i["file_name"] for i in coco.dataset["images"]} == files
        assert {Path(f).suffix for f in files} == {".jpg", ".png"}
        crops = list((synth_dataset / "imagefolder" / split).rglob("*.jpg"))
        assert len(crops) == len(coco.dataset["annotations"])  # one crop per object
    train = json.loads((synth_dataset / "annotations" / "instances_train.json").read_text())
    per_image = np.bincount([a["image_id"] for a in train["annotations"]])
    assert per_image.max() >= 3  # several objects per image
    assert {a["category_id"] for a in train["annotations"]} == {1, 2, 3, 4, 5}


def test_boxes_sit_on_painted_objects(synth_dataset):
    """Inside each box the picture differs from the background ring around it."""
    coco = json.loads((synth_dataset / "annotations" / "instances_val.json").read_text())
    for image in coco["images"][:8]:
        path = synth_dataset / "images" / "val" / image["file_name"]
        rgb = decode_image(path.read_bytes()).astype(np.float32)
        assert rgb.shape == (image["height"], image["width"], 3)
        for ann in (a for a in coco["annotations"] if a["image_id"] == image["id"]):
            x, y, w, h = (int(v) for v in ann["bbox"])
            assert w >= 4 and h >= 4 and x >= 0 and y >= 0
            assert x + w <= image["width"] and y + h <= image["height"]
            assert 0 < ann["area"] <= w * h
            inside = rgb[y:y + h, x:x + w]
            # visible object pixels share one colour (± noise): their spread is small
            core = inside[h // 2 - 1:h // 2 + 2, w // 2 - 1:w // 2 + 2].reshape(-1, 3)
            assert core.std(axis=0).max() < 40
