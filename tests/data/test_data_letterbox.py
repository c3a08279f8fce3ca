"""Letterbox: ground truth pushed through decode → letterbox → batch → postprocess → COCO
evaluation comes back exactly (mAP 1.0), on BCCD photographs and non-square synthetic images
at targets that are not multiples of the patch size, also after multi-scale rescaling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.data.conftest import BCCD_VOC, copy_bccd

PATCH = 16


class GroundTruthOracle(torch.nn.Module):
    """A "detector" answering each batch with that batch's own ground truth, in model
    coordinates: ``pred_boxes`` = the batch's boxes (normalised to the valid region),
    ``pred_logits`` one-hot on the true class (padding rows: "no object"). It checks that it
    is called with the patches, grid and valid region of the batch it answers."""

    patch_size = PATCH

    def __init__(self, batches: list[dict[str, torch.Tensor]], num_classes: int):
        super().__init__()
        self.batches = list(batches)
        self.num_classes = num_classes
        self.seen_valid_hw = 0

    def forward(self, patches, grid, valid_hw=None):
        batch = self.batches.pop(0)
        assert torch.equal(patches, batch["patches"])
        assert tuple(grid) == tuple(batch["grid"][0].tolist())
        if valid_hw is not None:
            assert torch.equal(valid_hw, batch["valid_hw"])
            self.seen_valid_hw += 1
        b, m = batch["classes"].shape
        logits = torch.full((b, m, self.num_classes + 1), -20.0)
        classes = torch.where(batch["box_mask"], batch["classes"], self.num_classes)
        logits.scatter_(2, classes[..., None], 20.0)
        return {"pred_logits": logits, "pred_boxes": batch["boxes"].float()}


def coco_map_of_ground_truth(batches: list[dict[str, torch.Tensor]], coco_gt: dict) -> dict:
    """The real evaluator (predict + COCOeval) run on the oracle's answers."""
    from components.evaluation import coco_metrics, predict_detections

    oracle = GroundTruthOracle(batches, num_classes=len(coco_gt["categories"]))
    preds = predict_detections(oracle, [dict(b) for b in batches], coco_gt, device="cpu")
    assert oracle.seen_valid_hw == len(batches)  # the evaluator passed the padding on
    metrics = coco_metrics(preds.results, coco_gt, image_ids=preds.image_ids)
    metrics["confident"] = sum(r["score"] > 0.5 for r in preds.results)
    return metrics


def rows_of(source, *, image_size: int, training: bool = False,
            reduced_decode: bool = True, max_boxes: int = 64) -> dict[str, np.ndarray]:
    """The map-task body (``make_rows``) over ``records``, without Ray."""
    from components.data.config import AugmentConfig
    from components.data.dataset import RowSpec, make_rows
    records = source.records
    spec = RowSpec(images=source.images, task="detection", training=training,
                   image_size=image_size, patch_size=PATCH, max_boxes=max_boxes,
                   max_pixels=40_000_000, augment=AugmentConfig(), seed=0, epoch=0,
                   reduced_decode=reduced_decode, letterbox=True)
    columns = {"image_id": np.array([r["image_id"] for r in records]),
               "file": np.array([r["file"] for r in records], dtype=object),
               "boxes": np.array([np.asarray(r["boxes"], np.float32) for r in records] + [None],
                                 dtype=object)[:-1],
               "classes": np.array([np.asarray(r["classes"]) for r in records] + [None],
                                   dtype=object)[:-1]}
    return make_rows(columns, spec)


# ------------------------------------------------------------------ synthetic, non-square
SIZES = [(200, 300), (513, 97), (768, 1024), (31, 45)]  # (h, w)


@pytest.fixture(scope="module")
def nonsquare_coco(tmp_path_factory) -> Path:
    """Noise images of the sizes above with 1-6 random boxes each (some touching the border,
    some a few pixels wide) as a COCO split; JPEG, so large ones take the reduced decode."""
    root = tmp_path_factory.mktemp("nonsquare")
    (root / "images").mkdir()
    rng = np.random.default_rng(7)
    images, annotations = [], []
    for i, (h, w) in enumerate(SIZES, start=1):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / "images" / f"{i}.jpg", quality=90)
        images.append({"id": i, "file_name": f"{i}.jpg", "width": w, "height": h})
        for _ in range(int(rng.integers(1, 7))):
            bw, bh = rng.uniform(3, w * 0.6), rng.uniform(3, h * 0.6)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            annotations.append({"id": len(annotations) + 1, "image_id": i,
                                "category_id": int(rng.integers(1, 4)),
                                "bbox": [round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)],
                                "area": bw * bh, "iscrowd": 0})
        annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": 2,
                            "bbox": [w - 10.0, h - 12.0, 10.0, 12.0], "area": 120, "iscrowd": 0})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": k, "name": f"c{k}"} for k in (1, 2, 3)]}
    (root / "instances.json").write_text(json.dumps(coco))
    return root


@pytest.mark.parametrize("target", [100, 150, 333])
def test_ground_truth_round_trip_on_nonsquare_images_is_exact(nonsquare_coco, target):
    from components.data.coco import read_coco
    from components.data.letterbox import canvas_side
    from components.data.loader import collate_numpy

    source = read_coco(str(nonsquare_coco / "instances.json"), str(nonsquare_coco / "images"))
    rows = rows_of(source, image_size=target)
    side = canvas_side(target, PATCH)
    assert side % PATCH == 0 and target % PATCH  # the targets are not patch multiples
    assert rows["patches"].shape == (len(SIZES), (side // PATCH) ** 2, PATCH * PATCH * 3)
    by_id = {r["image_id"]: (r["height"], r["width"]) for r in source.records}
    for image_id, (vh, vw), orig in zip(rows["image_id"], rows["valid_hw"], rows["orig_size"]):
        h, w = by_id[int(image_id)]
        assert tuple(orig) == (h, w)
        # the longer side is the target; the shorter within a pixel of the exact ratio
        assert max(vh, vw) == target and abs(min(vh, vw) - min(h, w) * target / max(h, w)) < 1
    batches = [collate_numpy({k: v[i:i + 2] for k, v in rows.items()}, "detection")
               for i in range(0, len(SIZES), 2)]
    metrics = coco_map_of_ground_truth(batches, source.gt)
    assert metrics["map"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["confident"] == sum(len(r["classes"]) for r in source.records)


def test_padding_is_zero_outside_the_valid_region(nonsquare_coco):
    from components.data.coco import read_coco
    from components.data.patchify import unpatchify

    source = read_coco(str(nonsquare_coco / "instances.json"), str(nonsquare_coco / "images"))
    rows = rows_of(source, image_size=100)
    for patches, grid, (vh, vw) in zip(rows["patches"], rows["grid"], rows["valid_hw"]):
        image = unpatchify(patches, tuple(grid), PATCH)
        assert image.shape[:2] == (112, 112)
        assert not image[vh:].any() and not image[:, vw:].any()
        assert (image[:vh, :vw].max(axis=2) > 0).all()  # the picture fills the valid region


def test_multiscale_rescaling_keeps_ground_truth_exact(nonsquare_coco):
    from components.data.coco import read_coco
    from components.data.letterbox import canvas_side, patch_mask, rescale_batch
    from components.data.loader import collate_numpy

    source = read_coco(str(nonsquare_coco / "instances.json"), str(nonsquare_coco / "images"))
    rows = rows_of(source, image_size=320)
    batch = collate_numpy(rows, "detection")
    for target in (97, 200, 416):
        scaled = rescale_batch(batch, target, PATCH)
        side = canvas_side(target, PATCH)
        assert tuple(scaled["grid"][0].tolist()) == (side // PATCH, side // PATCH)
        assert int(scaled["valid_hw"].max(dim=1).values.min()) == target
        mask = patch_mask(scaled["valid_hw"], (side // PATCH, side // PATCH), PATCH)
        assert mask.any(dim=1).all() and not mask.all()
        assert torch.equal(scaled["boxes"], batch["boxes"])
        metrics = coco_map_of_ground_truth([scaled], source.gt)
        assert metrics["map"] == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------------------ BCCD
@pytest.fixture(scope="module")
def bccd_val(tmp_path_factory) -> Path:
    return copy_bccd(tmp_path_factory.mktemp("bccd_lb"), {"val": 8})


def test_ground_truth_round_trip_on_bccd_through_ray_data_is_exact(ray_cluster, bccd_val):
    """BCCD's 640x480 photographs through the real dataset (Ray Data, reduced JPEG decode
    at 1/2 scale) letterboxed to 320: 320x240 image, 320x320 canvas."""
    from components.data.config import DataConfig
    from components.data.dataset import build_dataset
    from components.data.loader import iter_batches

    cfg = DataConfig(format="voc", root=str(bccd_val), image_size=320, patch_size=PATCH,
                     letterbox=True, max_boxes=100, validate_images=False)
    bundle = build_dataset(cfg, "val", training=False)
    batches = list(iter_batches(bundle.dataset, batch_size=4, task="detection"))
    assert sum(len(b["image_id"]) for b in batches) == 8
    for b in batches:
        assert b["valid_hw"].tolist() == [[240, 320]] * len(b["image_id"])
        assert b["orig_size"].tolist() == [[480, 640]] * len(b["image_id"])
        assert b["patches"].shape[1] == (320 // PATCH) ** 2
    metrics = coco_map_of_ground_truth(batches, bundle.coco_gt)
    assert metrics["map"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["num_images"] == 8


@pytest.mark.parametrize("target", [150, 500])
def test_ground_truth_round_trip_on_bccd_at_odd_targets_is_exact(bccd_val, target):
    """150 decodes BCCD at 1/4 scale (reduced JPEG decode), 500 in full; neither is a
    multiple of the patch."""
    from components.data.image_io import decode_at_size
    from components.data.loader import collate_numpy
    from components.data.transforms import ImageTransform
    from components.data.voc import read_voc

    source = read_voc(str(bccd_val), image_set=str(bccd_val / "ImageSets/Main/val.txt"))
    transform = ImageTransform(task="detection", training=False, image_size=target,
                               letterbox=True, patch_size=PATCH)
    data = source.images.read(source.records[0]["file"])
    rgb, full = decode_at_size(data, transform.min_decode_size)
    assert full == (480, 640) and max(rgb.shape[:2]) >= target
    assert (rgb.shape[0] < 480) == (target == 150)  # the reduced decode was used at 150
    rows = rows_of(source, image_size=target, max_boxes=100)
    batch = collate_numpy(rows, "detection")
    metrics = coco_map_of_ground_truth([batch], source.gt)
    assert metrics["map"] == pytest.approx(1.0, abs=1e-6)


def test_training_letterbox_keeps_boxes_on_their_objects(bccd_val):
    """Training letterbox (flips, colour jitter): boxes follow the pixels and stay normalised
    to the valid region, the canvas shape fixed."""
    from components.data.voc import read_voc

    source = read_voc(str(bccd_val), image_set=str(bccd_val / "ImageSets/Main/val.txt"))
    rows = rows_of(source, image_size=200, training=True, max_boxes=100)
    assert rows["patches"].shape[1] == (208 // PATCH) ** 2
    assert rows["valid_hw"].tolist() == [[150, 200]] * len(source.records)
    boxes = rows["boxes"][rows["box_mask"]]
    assert len(boxes) and (boxes >= 0).all() and (boxes <= 1).all()
    assert BCCD_VOC.is_dir()


def test_letterbox_options_are_checked_up_front():
    from components.data.config import DataConfig

    ok = DataConfig(format="voc", root="x", image_size=320, letterbox=True, multiscale=[200, 333])
    assert ok.multiscale == [200, 333]
    with pytest.raises(ValueError, match="data.letterbox is for detection formats"):
        DataConfig(format="imagefolder", root="x", letterbox=True)
    with pytest.raises(ValueError, match="data.multiscale needs data.letterbox"):
        DataConfig(format="voc", root="x", multiscale=[96])
    with pytest.raises(ValueError, match="sizes >= patch_size 16"):
        DataConfig(format="voc", root="x", letterbox=True, multiscale=[8, 96])


def test_multiscale_draws_are_seeded_per_batch(nonsquare_coco):
    from components.data.coco import read_coco
    from components.data.loader import collate_numpy, multiscale_batches

    source = read_coco(str(nonsquare_coco / "instances.json"), str(nonsquare_coco / "images"))
    batch = collate_numpy(rows_of(source, image_size=96), "detection")

    def sides(seed):
        return [int(b["grid"][0, 0]) * PATCH for b in
                multiscale_batches([batch] * 6, [48, 64, 96], seed=seed, patch_size=PATCH)]

    assert sides(1) == sides(1) and set(sides(1)) <= {48, 64, 96}
    assert len(set(sides(1) + sides(2) + sides(3))) > 1


@pytest.mark.slow
def test_detr_trains_letterboxed_multiscale_on_bccd_end_to_end(ray_cluster, bccd_small, tmp_path):
    """Ray Train on BCCD photos letterboxed (aspect kept) with multi-scale batches; the
    evaluator runs on the letterboxed val split with the padding mask."""
    from components.training.config import load_train_config
    from components.training.trainer import run_training

    configs = Path(__file__).resolve().parents[2] / "pipelines" / "configs"
    cfg = load_train_config(configs / "detect_ci.yaml", [
        "model.name=detr_demo", "data.format=voc", f"data.root={bccd_small}",
        "data.image_size=96", "data.letterbox=true", "data.multiscale=[64,80,96]",
        "data.max_boxes=40", f"run.storage_path={tmp_path}", "run.name=detect-lb",
        "batch_size=3", "epochs=2", "scaling.torch_threads=1"])
    summary = run_training(cfg)
    assert summary["steps"] == 4
    metrics = summary["metrics"]
    assert 0.0 <= metrics["map"] <= metrics["map50"] <= 1.0
