"""The evaluator and the serving runtime apply the detector's own NMS setting (``model.nms_iou``)."""

from __future__ import annotations

import torch

from components.core.checkpoint import CheckpointMeta
from components.models import build_model
from components.models.postprocess import detections
from components.evaluation import evaluate_detection, predict_detections

torch.set_num_threads(1)


def _coco_gt():
    """Two 100x100 images, one box each (COCO category 5)."""
    images = [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.png"} for i in (1, 2)]
    anns = [{"id": i, "image_id": i, "category_id": 5, "bbox": [30, 30, 40, 40], "area": 1600, "iscrowd": 0}
            for i in (1, 2)]
    return {"images": images, "annotations": anns, "categories": [{"id": 5, "name": "box"}]}


class _DuplicatingDetector(torch.nn.Module):
    """What a one-to-many-trained detector says: every true box twice (query 0: exact, score
    ~0.99; query 1: shifted by 1 px, score ~0.9), then a no-object query."""

    task = "detection"
    patch_size = 8

    def __init__(self, nms_iou: float | None) -> None:
        super().__init__()
        self.nms_iou = nms_iou

    def forward(self, patches, grid):
        b = patches.shape[0]
        logits = torch.full((b, 3, 2), -10.0)
        logits[:, 0, 0], logits[:, 1, 0], logits[:, 2, 1] = 5.0, 2.3, 10.0
        boxes = torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.51, 0.5, 0.4, 0.4], [0.1, 0.1, 0.1, 0.1]]).expand(b, 3, 4)
        return {"pred_logits": logits, "pred_boxes": boxes, "aux_outputs": []}


def _batches():
    yield {"patches": torch.zeros(2, 4, 192, dtype=torch.uint8), "grid": torch.tensor([[2, 2]] * 2),
           "image_id": torch.tensor([1, 2]), "orig_size": torch.tensor([[100, 100], [100, 100]])}


def test_evaluator_applies_the_models_nms():
    gt = _coco_gt()
    plain = predict_detections(_DuplicatingDetector(None), _batches(), gt, device="cpu", score_threshold=0.5)
    nms = predict_detections(_DuplicatingDetector(0.7), _batches(), gt, device="cpu", score_threshold=0.5)
    assert len(plain.results) == 4 and len(nms.results) == 2
    assert all(r["score"] > 0.95 for r in nms.results)
    # a duplicate is a false positive at a lower score: it does not cost AP here, but precision
    m = evaluate_detection(_DuplicatingDetector(0.7), _batches(), gt, device="cpu")
    assert m["map50"] == 1.0


def test_evaluator_reads_nms_through_a_ddp_style_wrapper():
    class Wrapped(torch.nn.Module):  # what DDP looks like to the evaluator: the model is .module
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args):
            return self.module(*args)

    gt = _coco_gt()
    preds = predict_detections(Wrapped(_DuplicatingDetector(0.7)), _batches(), gt, device="cpu",
                               score_threshold=0.5)
    assert len(preds.results) == 2


def test_serving_runtime_applies_the_models_nms():
    from components.serving.runtime import InferItem, LoadedModel

    torch.manual_seed(0)
    meta = CheckpointMeta(model_name="detr_demo", task="detection", model_config={}, class_names=["a", "b", "c"],
                          image_size=64, patch_size=16)
    model = build_model("detr_demo", num_classes=3, img_size=64, nms_iou=0.3).eval()
    loaded = LoadedModel(model=model, meta=meta, name="det", version="1", alias=None, uri="local",
                         device=torch.device("cpu"), autocast=None)
    patches = torch.randint(0, 256, (1, 16, 768), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    outputs = loaded.forward(patches.numpy())
    orig = torch.tensor([[64, 64]])
    (plain,) = detections(outputs, orig, top_k=20)
    (want,) = detections(outputs, orig, top_k=20, nms_iou=0.3)
    assert len(want["labels"]) < len(plain["labels"])  # untrained queries overlap a lot
    item = InferItem(patches=patches[0].numpy(), image_size=64, patch_size=16, orig_hw=(64, 64))
    (got,) = loaded.run([item], top_k=5, score_threshold=0.0, max_detections=20)
    assert got["labels"].tolist() == want["labels"].tolist()
    torch.testing.assert_close(torch.from_numpy(got["boxes"]), want["boxes"])
