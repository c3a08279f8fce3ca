"""build_dataset + iter_batches on a real local Ray cluster: the batch contract end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from components.data.boxes import batch_to_pixels_xyxy
from components.data.config import DataConfig
from components.data.dataset import build_dataset
from components.data.image_io import decode_image, resize_whole
from components.data.loader import iter_batches
from components.data.patchify import unpatchify


def _all(bundle, task, batch_size=8, dataset=None):
    return list(iter_batches(dataset or bundle.dataset, batch_size=batch_size, task=task))


def test_detection_eval_rows_follow_the_contract_and_map_back(ray_cluster, tiny_synth):
    cfg = DataConfig(root=str(tiny_synth), image_size=64, patch_size=16, max_boxes=6)
    bundle = build_dataset(cfg, "val", training=False)
    assert bundle.task == "detection" and bundle.num_rows == 8
    assert bundle.class_names == ["circle", "square", "triangle", "star", "cross"]
    assert bundle.category_ids == [1, 2, 3, 4, 5]
    batches = _all(bundle, "detection", batch_size=3)
    assert [len(b["patches"]) for b in batches] == [3, 3, 2]
    b = batches[0]
    assert b["patches"].dtype == torch.uint8 and b["patches"].shape == (3, 16, 16 * 16 * 3)
    assert b["grid"].dtype == torch.int64 and b["grid"].tolist() == [[4, 4]] * 3
    m = b["boxes"].shape[1]
    assert 1 <= m <= 6 and b["boxes"].dtype == torch.float32
    assert b["classes"].shape == (3, m) and b["classes"].dtype == torch.int64
    assert b["box_mask"].dtype == torch.bool and b["box_mask"].shape == (3, m)
    assert b["image_id"].dtype == torch.int64 and b["orig_size"].tolist() == [[64, 64]] * 3

    gt = COCO(str(bundle.coco_gt_path))
    seen = set()
    for batch in batches:
        pixels = batch_to_pixels_xyxy(batch["boxes"], batch["orig_size"])
        for i, image_id in enumerate(batch["image_id"].tolist()):
            seen.add(image_id)
            info = gt.loadImgs(image_id)[0]
            rgb = decode_image((tiny_synth / "images" / "val" / info["file_name"]).read_bytes())
            image = unpatchify(batch["patches"][i].numpy(), (4, 4), 16)
            assert np.array_equal(image, resize_whole(rgb, 64))  # eval = whole-image resize
            anns = gt.loadAnns(gt.getAnnIds(imgIds=image_id))
            want = sorted([a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                           a["bbox"][1] + a["bbox"][3], a["category_id"] - 1] for a in anns)
            mask = batch["box_mask"][i]
            got = sorted(p.tolist() + [c] for p, c in
                         zip(pixels[i][mask], batch["classes"][i][mask].tolist()))
            assert np.allclose(np.array(got), np.array(want), atol=1e-3)
    assert seen == set(gt.getImgIds())


def test_training_rows_are_seeded(ray_cluster, tiny_synth):
    # Several small blocks, so that map tasks can finish out of order.
    cfg = DataConfig(root=str(tiny_synth), image_size=64, seed=11, rows_per_block=4)
    first = _all(build_dataset(cfg, "train", training=True), "detection")[0]
    again = _all(build_dataset(cfg, "train", training=True), "detection")[0]
    for key in first:
        assert torch.equal(first[key], again[key]), key
    other_cfg = cfg.model_copy(update={"seed": 12})
    other = _all(build_dataset(other_cfg, "train", training=True), "detection")[0]
    assert not torch.equal(first["patches"], other["patches"])
    bundle = build_dataset(cfg, "train", training=True)
    epoch1 = _all(bundle, "detection", dataset=bundle.for_epoch(1))[0]
    assert not torch.equal(first["patches"], epoch1["patches"])
    # Iterating the same dataset again (what a Ray Train loop does each epoch) augments anew,
    # and pass k is the same for two datasets built alike.
    a = build_dataset(cfg, "train", training=True)
    b = build_dataset(cfg, "train", training=True)
    a0, a1 = _all(a, "detection")[0], _all(a, "detection")[0]
    b0, b1 = _all(b, "detection")[0], _all(b, "detection")[0]
    assert torch.equal(a0["patches"], first["patches"])
    assert torch.equal(a0["image_id"], a1["image_id"])  # same order ...
    assert not torch.equal(a0["patches"], a1["patches"])  # ... new augmentation
    assert torch.equal(a1["patches"], b1["patches"]) and torch.equal(a0["boxes"], b0["boxes"])
    fixed = build_dataset(cfg.model_copy(update={"augment_per_pass": False}), "train",
                          training=True)
    assert torch.equal(_all(fixed, "detection")[0]["patches"],
                       _all(fixed, "detection")[0]["patches"])
    # Training boxes stay normalised and inside the crop.
    boxes = first["boxes"][first["box_mask"]]
    assert boxes.numel() and boxes.min() >= 0 and boxes.max() <= 1


def test_bad_inputs_are_skipped_and_reported_not_fatal(ray_cluster, bad_coco):
    splits = {"val": {"annotations": str(bad_coco["annotations"]),
                      "images": str(bad_coco["images"])}}
    accepted = sum(1 for r in bad_coco["expected_files"].values() if r is None)
    # Up-front validation: the report is exact before any batch is drawn.
    bundle = build_dataset(DataConfig(splits=splits, image_size=32), "val", training=False)
    assert bundle.num_rows == accepted
    files = {s["file"] for s in bundle.report.skipped if "file" in s}
    assert files == {n for n, r in bad_coco["expected_files"].items() if r}
    assert bundle.report.counts["boxes_clipped"] == 1
    rows = sum(len(b["patches"]) for b in _all(bundle, "detection"))
    assert rows == accepted
    assert {a["id"] for a in bundle.coco_gt["annotations"]} == bad_coco["accepted_annotations"]
    # Without validation the stream itself drops what it cannot decode and keeps going.
    lazy = build_dataset(DataConfig(splits=splits, image_size=32, validate_images=False), "val",
                         training=True)
    rows = sum(len(b["patches"]) for b in _all(lazy, "detection"))
    assert rows == accepted + 1  # + exif_wrong_size.jpg: only the validation pass compares sizes


def test_imagefolder_classification(ray_cluster, tiny_synth):
    cfg = DataConfig(format="imagefolder", root=str(tiny_synth), image_size=32, patch_size=8)
    bundle = build_dataset(cfg, "train", training=True)
    assert bundle.task == "classification"
    assert bundle.class_names == sorted(["circle", "square", "triangle", "star", "cross"])
    files = sorted((tiny_synth / "imagefolder" / "train").rglob("*.jpg"))
    assert bundle.num_rows == len(files)
    batches = _all(bundle, "classification", batch_size=16)
    labels = torch.cat([b["label"] for b in batches])
    assert batches[0]["patches"].shape[1:] == (16, 8 * 8 * 3)
    assert set(batches[0]) == {"patches", "grid", "label"}
    counts = np.bincount(labels.numpy(), minlength=5)
    want = [len(list((tiny_synth / "imagefolder" / "train" / n).glob("*.jpg")))
            for n in bundle.class_names]
    assert counts.tolist() == want


def test_a_split_with_no_usable_image_is_one_clear_error(ray_cluster, tmp_path):
    from components.data.errors import DataError

    for name, data in (("a", b"not an image"), ("b", b"\x89PNG\r\n\x1a\n truncated")):
        (tmp_path / "val" / name).mkdir(parents=True)
        (tmp_path / "val" / name / "x.png").write_bytes(data)
    cfg = DataConfig(format="imagefolder", root=str(tmp_path), image_size=32, patch_size=8)
    with pytest.raises(DataError, match=r"the val split has no usable image: all 2 records were skipped"):
        build_dataset(cfg, "val", training=False)
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(cfg, "train", training=True)


def test_blocks_are_sized_by_the_patch_bytes_of_a_row():
    from components.data.config import BLOCK_TARGET_BYTES, MAX_ROWS_PER_BLOCK

    assert DataConfig(root="x", image_size=64).block_rows() == MAX_ROWS_PER_BLOCK
    vit_b = DataConfig(root="x", image_size=224).block_rows()
    assert vit_b == BLOCK_TARGET_BYTES // (224 * 224 * 3) and 16 < vit_b < MAX_ROWS_PER_BLOCK
    assert DataConfig(root="x", image_size=1600).block_rows() == 1  # one 7.7 MB row per block
    assert DataConfig(root="x", image_size=64, rows_per_block=4).block_rows() == 4


def test_config_rejects_bad_geometry():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        DataConfig(root="x", image_size=40, patch_size=16)
    with pytest.raises(ValueError, match="root or data.splits"):
        DataConfig()
