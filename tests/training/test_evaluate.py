"""The shared evaluator: top-k on known logits, COCO mAP on known predictions, plots.

The "predictions → metrics" half is fed hand-made predictions (perfect ones must give
exactly 1.0); the "model → predictions" half is run on a tiny module with known outputs, so
the mapping back to original pixels and COCO category ids is checked end to end.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.evaluation import (
    classification_metrics,
    coco_metrics,
    evaluate_classification,
    plot_confusion_matrix,
    plot_sample_predictions,
    predict_classification,
)


# ------------------------------------------------------------------- classification
def test_topk_on_known_logits():
    logits = np.array([
        [9, 1, 0, 0, 0, 0],  # true 0: top1 hit
        [5, 4, 3, 2, 1, 0],  # true 1: 2nd → top1 miss, top5 hit
        [0, 1, 2, 3, 4, 5],  # true 0: last of 6 → miss in top5
        [0, 0, 0, 0, 7, 0],  # true 4: hit
    ], dtype=np.float32)
    labels = np.array([0, 1, 0, 4])
    m = classification_metrics(logits, labels, num_classes=6, topk=(1, 2, 5))
    assert m["top1"] == pytest.approx(2 / 4)
    assert m["top2"] == pytest.approx(3 / 4)
    assert m["top5"] == pytest.approx(3 / 4)
    assert m["num_samples"] == 4
    confusion = np.array(m["confusion"])
    assert confusion.shape == (6, 6)
    assert confusion[0, 0] == 1 and confusion[1, 0] == 1 and confusion[0, 5] == 1
    assert confusion[4, 4] == 1 and confusion.sum() == 4
    assert m["per_class_accuracy"][0] == pytest.approx(0.5)
    assert m["per_class_accuracy"][2] is None  # no samples of class 2


def test_topk_larger_than_classes_counts_all():
    logits = np.array([[0.1, 0.9, 0.0]], dtype=np.float32)
    m = classification_metrics(logits, np.array([2]), num_classes=3, topk=(1, 5))
    assert m["top1"] == 0.0 and m["top5"] == 1.0


class _FixedClassifier(torch.nn.Module):
    """Predicts class = mean patch value of the first patch's first pixel (known logits)."""

    task = "classification"
    patch_size = 8

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.calls: list[tuple[int, int]] = []

    def forward(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        self.calls.append(grid)
        cls = patches[:, 0, 0].long() % self.num_classes
        return torch.nn.functional.one_hot(cls, self.num_classes).float()


def _cls_batches(labels_per_batch, predicted_per_batch, *, p=8, grid=(2, 2)):
    for labels, predicted in zip(labels_per_batch, predicted_per_batch):
        b = len(labels)
        patches = torch.zeros(b, grid[0] * grid[1], p * p * 3, dtype=torch.uint8)
        patches[:, 0, 0] = torch.tensor(predicted, dtype=torch.uint8)
        yield {
            "patches": patches,
            "grid": torch.tensor([grid] * b, dtype=torch.int64),
            "label": torch.tensor(labels, dtype=torch.int64),
        }


def test_evaluate_classification_runs_model_in_eval_mode_and_restores():
    model = _FixedClassifier(num_classes=3).train()
    batches = _cls_batches([[0, 1, 2], [2, 2]], [[0, 1, 1], [2, 0]])
    m = evaluate_classification(model, batches, device="cpu", num_classes=3, topk=(1,))
    assert m["top1"] == pytest.approx(3 / 5)
    assert model.training  # restored
    assert model.calls == [(2, 2), (2, 2)]  # grid passed as a tuple of ints
    assert np.array(m["confusion"])[1, 1] == 1 and np.array(m["confusion"])[2, 1] == 1


def test_classification_plots(tmp_path):
    model = _FixedClassifier(num_classes=3)
    preds = predict_classification(
        model, _cls_batches([[0, 1, 2]], [[0, 1, 1]]), device="cpu", keep_samples=2
    )
    assert len(preds.samples) == 2 and preds.samples[0]["image"].shape == (16, 16, 3)
    m = classification_metrics(preds.logits, preds.labels, num_classes=3)
    cm = plot_confusion_matrix(m["confusion"], ["a", "b", "c"], tmp_path / "cm.png")
    sp = plot_sample_predictions(preds.samples, ["a", "b", "c"], tmp_path / "samples.png")
    for path in (cm, sp):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_empty_batches_is_a_clear_error():
    with pytest.raises(ValueError, match="empty"):
        evaluate_classification(_FixedClassifier(3), [], device="cpu", num_classes=3)


# ------------------------------------------------------------------------ detection
def _coco_gt():
    """Three images, two categories with non-contiguous COCO ids (3 and 7)."""
    images = [{"id": i, "width": 120, "height": 80, "file_name": f"{i}.png"} for i in (1, 2, 3)]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 20]},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [60, 30, 40, 40]},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [5, 40, 50, 30]},
        {"id": 4, "image_id": 3, "category_id": 7, "bbox": [70, 5, 20, 25]},
    ]
    for a in anns:
        a.update(area=a["bbox"][2] * a["bbox"][3], iscrowd=0)
    cats = [{"id": 3, "name": "circle"}, {"id": 7, "name": "square"}]
    return {"images": images, "annotations": anns, "categories": cats}


def _perfect(gt):
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]),
         "score": 0.9}
        for a in gt["annotations"]
    ]


def test_perfect_predictions_give_map_one():
    gt = _coco_gt()
    m = coco_metrics(_perfect(gt), gt)
    assert m["map"] == pytest.approx(1.0)
    assert m["map50"] == pytest.approx(1.0) and m["map75"] == pytest.approx(1.0)
    assert m["per_class_ap"] == {"circle": pytest.approx(1.0), "square": pytest.approx(1.0)}
    assert m["num_images"] == 3 and m["num_predictions"] == 4


def test_shifted_boxes_lower_map():
    gt = _coco_gt()
    preds = _perfect(gt)
    for p in preds:  # shift every box by ~20% of its width: IoU ≈ 0.67
        p["bbox"][0] += 0.2 * p["bbox"][2]
    m = coco_metrics(preds, gt)
    assert m["map50"] == pytest.approx(1.0)  # still matched at IoU 0.5
    assert m["map75"] == pytest.approx(0.0)  # not at 0.75
    assert 0.0 < m["map"] < 0.5


def test_wrong_category_and_missing_predictions():
    gt = _coco_gt()
    preds = _perfect(gt)
    preds[0]["category_id"] = 7  # circle in image 1 predicted as square
    m = coco_metrics(preds, gt)
    assert m["per_class_ap"]["square"] == pytest.approx(1.0, abs=0.35)
    assert m["per_class_ap"]["circle"] < 1.0
    assert coco_metrics([], gt)["map"] == 0.0


def test_restricting_image_ids():
    gt = _coco_gt()
    preds = [p for p in _perfect(gt) if p["image_id"] == 1]
    assert coco_metrics(preds, gt, image_ids=[1])["map"] == pytest.approx(1.0)
    assert coco_metrics(preds, gt)["map"] < 1.0  # images 2 and 3 have missed objects


class _OracleDetector(torch.nn.Module):
    """Outputs, per image, one confident query per ground-truth box (normalised cxcywh of the
    model input) plus a no-object query: exactly what a perfect detector would say."""

    task = "detection"
    patch_size = 8

    def __init__(self, outputs_by_image: dict[int, tuple[torch.Tensor, torch.Tensor]]):
        super().__init__()
        self.outputs_by_image = outputs_by_image
        self.current_ids: list[int] = []

    def forward(self, patches, grid):
        logits = torch.stack([self.outputs_by_image[i][0] for i in self.current_ids])
        boxes = torch.stack([self.outputs_by_image[i][1] for i in self.current_ids])
        return {"pred_logits": logits, "pred_boxes": boxes, "aux_outputs": []}


def _det_batches(gt, model, *, shift=0.0, p=8, grid=(2, 2)):
    """Batches of the batch contract for ``gt`` whose model outputs are the true boxes
    (moved right by ``shift`` of the box width), in contiguous class ids."""
    from components.data.boxes import coco_to_batch

    cat_ids = sorted(c["id"] for c in gt["categories"])
    num_queries, num_classes = 3, len(cat_ids)
    images = {im["id"]: im for im in gt["images"]}
    for image_id, im in images.items():
        anns = [a for a in gt["annotations"] if a["image_id"] == image_id]
        logits = torch.full((num_queries, num_classes + 1), -10.0)
        logits[:, -1] = 10.0  # no object ...
        boxes = torch.full((num_queries, 4), 0.5)
        for q, a in enumerate(anns):  # ... except one query per true box
            x, y, w, h = a["bbox"]
            xywh = np.array([[x + shift * w, y, w, h]])
            boxes[q] = torch.from_numpy(coco_to_batch(xywh, im["width"], im["height"])[0])
            logits[q, :] = -10.0
            logits[q, cat_ids.index(a["category_id"])] = 10.0
        model.outputs_by_image[image_id] = (logits, boxes)
    ids = list(images)
    for start in range(0, len(ids), 2):  # batches of 2 images
        chunk = ids[start:start + 2]
        model.current_ids = chunk
        b = len(chunk)
        yield {
            "patches": torch.zeros(b, grid[0] * grid[1], p * p * 3, dtype=torch.uint8),
            "grid": torch.tensor([grid] * b),
            "image_id": torch.tensor(chunk),
            "orig_size": torch.tensor([[images[i]["height"], images[i]["width"]] for i in chunk]),
        }


def test_evaluate_detection_maps_back_to_pixels_and_coco_ids(tmp_path):
    from components.evaluation import evaluate_detection, predict_detections

    gt = _coco_gt()
    model = _OracleDetector({})
    m = evaluate_detection(model, _det_batches(gt, model), gt, device="cpu")
    assert m["map"] == pytest.approx(1.0) and m["map50"] == pytest.approx(1.0)
    assert m["per_class_ap"] == {"circle": pytest.approx(1.0), "square": pytest.approx(1.0)}
    # The same through a COCO file on disk, with a shift: mAP falls, mAP50 holds.
    path = tmp_path / "gt.json"
    path.write_text(__import__("json").dumps(gt))
    model = _OracleDetector({})
    shifted = evaluate_detection(model, _det_batches(gt, model, shift=0.2), path, device="cpu")
    assert shifted["map50"] == pytest.approx(1.0) and shifted["map"] < 0.5
    # Predictions are in original pixels and COCO category ids.
    model = _OracleDetector({})
    preds = predict_detections(model, _det_batches(gt, model), gt, device="cpu",
                               score_threshold=0.5)
    first = next(r for r in preds.results if r["image_id"] == 2)
    assert first["category_id"] == 3
    assert first["bbox"] == pytest.approx([5, 40, 50, 30], abs=1e-3)
    assert sorted(preds.image_ids) == [1, 2, 3]


def test_detection_sample_plot(tmp_path):
    from components.evaluation import predict_detections

    gt = _coco_gt()
    model = _OracleDetector({})
    preds = predict_detections(model, _det_batches(gt, model), gt, device="cpu", keep_samples=3)
    assert len(preds.samples) == 3
    # Predicted boxes are drawn relative to the model input: within [0, 1].
    assert all(((s["pred_boxes_xyxy"] >= 0) & (s["pred_boxes_xyxy"] <= 1)).all()
               for s in preds.samples)
    out = plot_sample_predictions(preds.samples, ["circle", "square"], tmp_path / "det.png")
    assert out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 1000
