"""The one evaluator: training, promotion, the report, export parity and batch inference
all measure models here (task-agnostic: top-k accuracy and COCO mAP).

Two halves, so each can be tested (and reused) on its own:

- **run the model → predictions**: :func:`predict_classification` (logits and labels) and
  :func:`predict_detections` (COCO result dicts: ``image_id``, COCO ``category_id``, ``bbox``
  xywh in pixels of the original image, ``score``);
- **predictions → metrics**: :func:`classification_metrics` (top-k, confusion matrix) and
  :func:`coco_metrics` (pycocotools ``COCOeval``: mAP, mAP50, mAP75, per-class AP).

:func:`evaluate_classification` / :func:`evaluate_detection` chain the two. Plots (confusion
matrix, sample predictions) are PNGs drawn by :mod:`components.evaluation.plots`.

Batches follow the batch contract (``components.data.loader.iter_batches``): ``patches``
uint8 ``[B, N, P*P*3]``, ``grid`` int64 ``[B, 2]``; classification adds ``label`` ``[B]``;
detection adds ``image_id`` ``[B]`` and ``orig_size`` ``[B, 2]`` (h, w). Detection outputs are
mapped back to original pixels with ``components.data.boxes`` (the eval transform resizes the
whole image, no crop), and contiguous class ids back to COCO category ids (sorted order).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.core.batch import batch_grid
from components.core.device import autocast

Batch = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _patch_size(model: torch.nn.Module) -> int:
    inner = getattr(model, "module", model)  # DDP-wrapped or not
    return int(getattr(inner, "patch_size", 16))


def _batch_images(batch: Batch, patch_size: int) -> np.ndarray:
    """``[B, H, W, 3]`` uint8 images at model resolution, rebuilt from the patches."""
    from components.data.patchify import unpatchify

    images = unpatchify(batch["patches"].detach().cpu(), batch_grid(batch), patch_size)
    return images.to(torch.uint8).numpy()


# ------------------------------------------------------------------- classification
@dataclass
class ClassificationPredictions:
    """``logits`` ``[N, C]`` float32, ``labels`` ``[N]`` int64; ``samples``: a few images
    ``[H, W, 3]`` uint8 with their label and logits, for the sample-predictions plot."""

    logits: np.ndarray
    labels: np.ndarray
    samples: list[dict[str, Any]] = field(default_factory=list)


def predict_classification(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    *,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None = None,
    keep_samples: int = 0,
) -> ClassificationPredictions:
    """Run ``model`` over ``batches``; collect logits and labels on the CPU."""
    device = torch.device(device)
    logits_all, labels_all, samples = [], [], []
    patch_size = _patch_size(model)
    with _eval_mode(model):
        for batch in batches:
            patches = batch["patches"].to(device, non_blocking=True)
            with autocast(device, autocast_dtype):
                logits = model(patches, batch_grid(batch))
            logits = logits.float().cpu()
            labels = batch["label"].detach().cpu().long()
            logits_all.append(logits)
            labels_all.append(labels)
            if len(samples) < keep_samples:
                images = _batch_images(batch, patch_size)
                for i in range(min(keep_samples - len(samples), len(labels))):
                    samples.append(
                        {"image": images[i], "label": int(labels[i]), "logits": logits[i].numpy()}
                    )
    if not logits_all:
        raise ValueError("evaluation got no batches: the validation split is empty")
    return ClassificationPredictions(
        torch.cat(logits_all).numpy(), torch.cat(labels_all).numpy(), samples
    )


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, *, num_classes: int, topk: Sequence[int] = (1, 5)
) -> dict[str, Any]:
    """Top-k accuracy and the confusion matrix of ``logits`` ``[N, C]`` against ``labels`` ``[N]``.

    Returns ``{"top1": float, "top5": float, ..., "confusion": [[int]] (rows = true class,
    columns = predicted), "per_class_accuracy": [float | None], "num_samples": N}``. A ``k``
    larger than the number of classes counts as ``C`` (every sample is then correct).
    """
    logits = np.asarray(logits, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} do not match")
    n = len(labels)
    out: dict[str, Any] = {"num_samples": n}
    # Stable descending order: ties resolve to the lower class id, deterministically.
    ranked = np.argsort(-logits, axis=1, kind="stable")
    for k in topk:
        hits = (ranked[:, : min(k, logits.shape[1])] == labels[:, None]).any(axis=1)
        out[f"top{k}"] = float(hits.mean()) if n else 0.0
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, ranked[:, 0]), 1)
    support = confusion.sum(axis=1)
    out["confusion"] = confusion.tolist()
    out["per_class_accuracy"] = [
        float(confusion[c, c] / support[c]) if support[c] else None for c in range(num_classes)
    ]
    return out


def evaluate_classification(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    *,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None = None,
    num_classes: int,
    topk: Sequence[int] = (1, 5),
) -> dict[str, Any]:
    """Top-1/top-5 and the confusion matrix of ``model`` on ``batches``."""
    preds = predict_classification(model, batches, device=device, autocast_dtype=autocast_dtype)
    return classification_metrics(preds.logits, preds.labels, num_classes=num_classes, topk=topk)


# ------------------------------------------------------------------------ detection
def load_coco(coco_gt: Any):
    """A pycocotools ``COCO`` from a path, a COCO dict or a ``COCO`` object (quietly)."""
    from pycocotools.coco import COCO

    if isinstance(coco_gt, COCO):
        return coco_gt
    if isinstance(coco_gt, (str, Path)):
        dataset = json.loads(Path(coco_gt).read_text())
    elif isinstance(coco_gt, dict):
        dataset = copy.deepcopy(coco_gt)
    else:
        raise TypeError(f"coco_gt must be a path, a dict or a COCO object, not {type(coco_gt)}")
    dataset.setdefault("info", {})
    dataset.setdefault("licenses", [])
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def contiguous_to_coco_ids(coco) -> list[int]:
    """Index = contiguous class id (the data layer's order: COCO ids sorted) → COCO id."""
    return sorted(coco.getCatIds())


@dataclass
class DetectionPredictions:
    """``results``: COCO result dicts (``image_id``, ``category_id`` COCO id, ``bbox`` xywh
    original pixels, ``score``); ``image_ids``: every image seen, with or without detections;
    ``samples``: a few images at model resolution with predicted and true boxes (normalised
    cxcywh) for the sample-predictions plot."""

    results: list[dict[str, Any]]
    image_ids: list[int]
    samples: list[dict[str, Any]] = field(default_factory=list)


def predict_detections(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    coco_gt: Any,
    *,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None = None,
    score_threshold: float = 0.0,
    top_k: int = 100,
    keep_samples: int = 0,
) -> DetectionPredictions:
    """Run a detector over ``batches``; predictions in original-image pixels and COCO ids."""
    from components.data.boxes import xyxy_to_coco
    from components.models.base import padding_kwargs
    from components.models.postprocess import detection_settings, detections

    device = torch.device(device)
    cat_ids = contiguous_to_coco_ids(load_coco(coco_gt))
    results: list[dict[str, Any]] = []
    image_ids: list[int] = []
    samples: list[dict[str, Any]] = []
    patch_size = _patch_size(model)
    settings = detection_settings(model)
    with _eval_mode(model):
        for batch in batches:
            patches = batch["patches"].to(device, non_blocking=True)
            with autocast(device, autocast_dtype):
                outputs = model(patches, batch_grid(batch), **padding_kwargs(batch))
            outputs = {
                k: v.float().cpu() for k, v in outputs.items() if k in ("pred_logits", "pred_boxes")
            }
            orig = batch["orig_size"].detach().cpu()
            per_image = detections(outputs, orig, score_threshold=score_threshold, top_k=top_k, **settings)
            ids = [int(i) for i in batch["image_id"].detach().cpu()]
            image_ids.extend(ids)
            for image_id, det in zip(ids, per_image):
                xywh = xyxy_to_coco(det["boxes"].float()).tolist()
                for box, score, label in zip(xywh, det["scores"].tolist(), det["labels"].tolist()):
                    if not 0 <= label < len(cat_ids):
                        continue  # the no-object class never reaches here; be safe anyway
                    results.append({
                        "image_id": image_id, "category_id": cat_ids[label],
                        "bbox": [round(float(v), 3) for v in box], "score": float(score),
                    })
            if len(samples) < keep_samples:
                images = _batch_images(batch, patch_size)
                for i in range(min(keep_samples - len(samples), len(ids))):
                    scale = torch.tensor([orig[i, 1], orig[i, 0], orig[i, 1], orig[i, 0]]).float()
                    mask = batch["box_mask"][i].bool() if "box_mask" in batch else None
                    gt = batch["boxes"][i][mask] if mask is not None else torch.zeros(0, 4)
                    gt_cls = batch["classes"][i][mask] if mask is not None else torch.zeros(0)
                    samples.append({
                        "image": images[i],
                        "pred_boxes_xyxy": (per_image[i]["boxes"].float() / scale).numpy(),
                        "pred_labels": per_image[i]["labels"].numpy(),
                        "pred_scores": per_image[i]["scores"].float().numpy(),
                        "gt_boxes_cxcywh": gt.float().cpu().numpy(),
                        "gt_labels": gt_cls.long().cpu().numpy(),
                    })
    if not image_ids:
        raise ValueError("evaluation got no batches: the validation split is empty")
    return DetectionPredictions(results, image_ids, samples)


def coco_metrics(
    results: list[dict[str, Any]],
    coco_gt: Any,
    *,
    image_ids: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """COCO box metrics of ``results`` against ``coco_gt`` with pycocotools' ``COCOeval``.

    Only ``image_ids`` (default: every image of ``coco_gt``) are evaluated. Returns ``{"map",
    "map50", "map75", "map_small", "map_medium", "map_large", "mar100", "per_class_ap":
    {name: AP or None when the class has no ground truth}, "num_images", "num_predictions"}``.
    No predictions at all is a valid answer: every AP is 0.
    """
    from pycocotools.cocoeval import COCOeval

    coco = load_coco(coco_gt)
    cat_ids = contiguous_to_coco_ids(coco)
    if class_names is None:
        class_names = [coco.cats[c].get("name", str(c)) for c in cat_ids]
    ids = sorted(set(int(i) for i in (image_ids if image_ids is not None else coco.getImgIds())))
    out: dict[str, Any] = {"num_images": len(ids), "num_predictions": len(results)}
    has_gt = bool(coco.getAnnIds(imgIds=ids))
    if not results or not has_gt:
        out.update({k: 0.0 for k in ("map", "map50", "map75", "map_small", "map_medium",
                                      "map_large", "mar100")})
        out["per_class_ap"] = {
            name: (0.0 if coco.getAnnIds(imgIds=ids, catIds=[cid]) else None)
            for name, cid in zip(class_names, cat_ids)
        }
        return out
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco.loadRes(copy.deepcopy(results))
        evaluator = COCOeval(coco, coco_dt, iouType="bbox")
        evaluator.params.imgIds = ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [max(float(s), 0.0) for s in evaluator.stats]
    out.update({
        "map": stats[0], "map50": stats[1], "map75": stats[2], "map_small": stats[3],
        "map_medium": stats[4], "map_large": stats[5], "mar100": stats[8],
    })
    # precision: [T iou, R recall, K class, A area, M maxdets]; area "all", maxDets 100.
    precision = evaluator.eval["precision"]
    per_class: dict[str, float | None] = {}
    for k, (name, cid) in enumerate(zip(class_names, cat_ids)):
        p = precision[:, :, evaluator.params.catIds.index(cid), 0, -1]
        p = p[p > -1]
        per_class[name] = float(p.mean()) if p.size else None
    out["per_class_ap"] = per_class
    return out


def evaluate_detection(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    coco_gt: Any,
    *,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None = None,
    score_threshold: float = 0.0,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """COCO mAP / mAP50 / mAP75 / per-class AP of a detector on the images in ``batches``."""
    preds = predict_detections(
        model, batches, coco_gt, device=device, autocast_dtype=autocast_dtype,
        score_threshold=score_threshold,
    )
    return coco_metrics(preds.results, coco_gt, image_ids=preds.image_ids, class_names=class_names)

