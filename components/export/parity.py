"""Parity of an export with its PyTorch model: output differences, metric, latency.

Both models see the same batches (the data layer's eval transform, held in memory once):

- **max abs difference** of every output tensor (``logits``; ``pred_logits``, ``pred_boxes``);
- **the task's metric** through THE evaluator (``components.evaluation``): top-1
  for classifiers, COCO mAP50 for detectors, for each model, and their difference;
- **latency**: batch-1 median (ms) and batch-32 throughput (images/s), PyTorch eager and
  the export measured in turns in one loop, on the same threads.

Reference labels: the split's own ground truth when its classes are the model's. When they
are not (the synthetic sample for a model trained on other classes), the PyTorch model's
own answers are the reference: its top-1 per image, or its 5 best detections per image as
ground truth. The report names which (``data.reference``). With ground truth the PyTorch
metric is the model's real score; with PyTorch answers as reference it is ~1 by
construction and the export's metric says how often it agrees.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from components.core.checkpoint import CheckpointMeta
from components.data.config import with_boxes
from components.export.graph import example_patches, output_names
from components.tasks import get_task

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
_NEEDS = {"classification": "an ImageFolder split (class folders)",
          "detection": "a COCO (--annotations) or VOC (--split-format voc) split"}
PSEUDO_TOP_K = 5  # detections per image taken as ground truth when there is none


@dataclass
class ParityData:
    """Eval batches (batch contract) held in memory, their ground truth and provenance."""

    batches: list[Batch]
    class_names: list[str]
    coco_gt: Any | None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def has_ground_truth(self) -> bool:
        return self.info.get("reference") == "ground truth"


def load_split(meta: CheckpointMeta, *, images: str | None, annotations: str | None,
               synthetic_images: int, max_images: int, batch_size: int,
               split_format: str | None = None, image_set: str | None = None) -> ParityData:
    """The split given (``split_format``; default COCO with ``annotations``, else ImageFolder;
    VOC with an optional ``image_set``) or a synthetic sample.

    Broken images and annotations are skipped and counted by the data layer (``info``
    carries the counts). A given split must be of the model's task and classes.
    """
    from pydantic import ValidationError

    from components.data.config import DataConfig, SplitPaths
    from components.data.dataset import task_of
    from components.data.errors import DataError

    workdir = None
    if images is None:
        from components.data.synth import CLASS_NAMES, SynthConfig, synthesize

        workdir = tempfile.TemporaryDirectory(prefix="vitpipe-export-synth-")
        synthesize(workdir.name, SynthConfig(seed=0, num_train=0, num_val=synthetic_images,
                                             image_size=max(64, meta.image_size)))
        fmt = get_task(meta.task).sample_format  # the synthetic sample
        cfg = DataConfig(format=fmt, root=workdir.name, image_size=meta.image_size,
                         patch_size=meta.patch_size,
                         class_names=_label_order(fmt, meta, known=CLASS_NAMES))
        where = f"synthetic ({synthetic_images} scenes, seed 0)"
    else:
        fmt = split_format or ("coco" if annotations else "imagefolder")
        try:
            cfg = DataConfig(format=fmt, image_size=meta.image_size, patch_size=meta.patch_size,
                             splits={"val": SplitPaths(images=images, annotations=annotations,
                                                       image_set=image_set)},
                             class_names=_label_order(fmt, meta))
        except ValidationError as err:
            raise DataError(f"the {fmt} split: {err.errors()[0]['msg']}") from None
        where = " + ".join(p for p in (images, annotations, image_set) if p)
        if task_of(cfg) != meta.task:
            raise DataError(f"{meta.model_name} is a {meta.task} model: give {_NEEDS[meta.task]}")
    try:
        bundle, batches = _eval_split(cfg, meta.task, batch_size)
        kept, seen = [], 0
        for batch in batches():
            room = max_images - seen
            if room <= 0:
                break
            kept.append({k: v[:room] for k, v in batch.items()})
            seen += len(kept[-1]["patches"])
    finally:
        if workdir is not None:
            workdir.cleanup()
    same_classes = list(bundle.class_names) == list(meta.class_names)
    if images is not None and not same_classes:
        raise DataError(f"the split's classes {list(bundle.class_names)} are not the model's "
                        f"{list(meta.class_names)}: metrics would not be comparable")
    coco_gt = None
    if with_boxes(meta.task) and same_classes:
        from components.tracking.promotion import coco_ground_truth

        coco_gt = coco_ground_truth(bundle)
    counts = dict(bundle.report.counts)
    info = {
        "split": where, "images": seen, "images_in_split": bundle.num_rows,
        "skipped": len(bundle.report.skipped), "skip_reasons": dict(bundle.report.reasons()),
        "counts": counts,
        "reference": "ground truth" if same_classes else "pytorch predictions",
    }
    if with_boxes(meta.task) and coco_gt is None:
        coco_gt = _image_skeleton(bundle.coco_gt, meta.class_names)
    return ParityData(kept, list(bundle.class_names), coco_gt, info)


def _label_order(fmt: str, meta: CheckpointMeta, known: Iterable[str] | None = None):
    """ImageFolder labels in the model's class order (folders are otherwise sorted by name);
    for the synthetic sample only when it has the model's classes. COCO: ``None``, the
    data layer and the evaluator both order classes by COCO category id."""
    if fmt != "imagefolder" or (known is not None and set(known) != set(meta.class_names)):
        return None
    return list(meta.class_names)


def _eval_split(cfg, task: str, batch_size: int):
    from components.tracking.promotion import _eval_batches

    return _eval_batches(cfg, "val", task, batch_size)


def _image_skeleton(gt: dict[str, Any], class_names: list[str]) -> dict[str, Any]:
    """The split's images with the model's categories (ids 1..K) and no annotations yet."""
    return {"images": list(gt["images"]), "annotations": [],
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(class_names)]}


# ------------------------------------------------------------------------ outputs
class _Recorder(nn.Module):
    """Runs ``module`` and keeps its raw outputs (numpy) per batch.

    ``module`` is reachable as ``.module``, where the evaluator reads ``patch_size`` and
    postprocessing reads ``nms_iou`` (as through a DDP wrapper)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.outputs: list[dict[str, np.ndarray]] = []

    def forward(self, patches: torch.Tensor, grid: Any):
        out = self.module(patches, grid)
        tensors = out if isinstance(out, dict) else {"logits": out}
        self.outputs.append({k: v.detach().float().cpu().numpy() for k, v in tensors.items()
                             if isinstance(v, torch.Tensor)})
        return out


def _max_abs_diff(ref: _Recorder, got: _Recorder, names: Iterable[str]) -> dict[str, float]:
    diffs = {}
    for name in names:
        worst = 0.0
        for a, b in zip(ref.outputs, got.outputs, strict=True):
            if a[name].shape != b[name].shape:
                raise ValueError(f"{name}: shapes differ, {a[name].shape} vs {b[name].shape}")
            worst = max(worst, float(np.abs(a[name] - b[name]).max(initial=0.0)))
        diffs[name] = worst
    return diffs


def compare_outputs(model: nn.Module, exported: nn.Module, data: ParityData,
                    meta: CheckpointMeta) -> dict[str, Any]:
    """Run both on ``data``: max abs differences, the task's metric for each, output shapes
    (without the batch axis)."""
    ref, got = _Recorder(model), _Recorder(exported)
    scores, extra = _SCORE[meta.task](ref, got, data, meta)
    metric = {"name": get_task(meta.task).target_metric, "pytorch": scores[0], "exported": scores[1],
              "abs_diff": abs(scores[0] - scores[1]), **extra}
    names = output_names(meta.task)
    return {"max_abs_diff": _max_abs_diff(ref, got, names), "metric": metric,
            "output_shapes": {n: list(ref.outputs[0][n].shape[1:]) for n in names}}


def _score_classification(ref: _Recorder, got: _Recorder, data: ParityData,
                          meta: CheckpointMeta) -> tuple[list[float], dict[str, Any]]:
    """Top-1 of both (labels: ground truth or the reference's top-1) and their agreement."""
    import components.evaluation as ev

    a = ev.predict_classification(ref, data.batches, device="cpu")
    b = ev.predict_classification(got, data.batches, device="cpu")
    labels = a.labels if data.has_ground_truth else a.logits.argmax(axis=1)
    scores = [ev.classification_metrics(p.logits, labels, num_classes=len(meta.class_names),
                                        topk=(1,))["top1"] for p in (a, b)]
    return scores, {"top1_agreement": float((a.logits.argmax(1) == b.logits.argmax(1)).mean())}


def _score_detection(ref: _Recorder, got: _Recorder, data: ParityData,
                     meta: CheckpointMeta) -> tuple[list[float], dict[str, Any]]:
    """COCO mAP50 of both (ground truth, or the reference's best detections as ground truth)."""
    import components.evaluation as ev

    a = ev.predict_detections(ref, data.batches, data.coco_gt, device="cpu")
    b = ev.predict_detections(got, data.batches, data.coco_gt, device="cpu")
    gt = data.coco_gt if data.has_ground_truth else _pseudo_ground_truth(data.coco_gt, a.results)
    return [ev.coco_metrics(p.results, gt, image_ids=a.image_ids)["map50"] for p in (a, b)], {}


_SCORE = {"classification": _score_classification, "detection": _score_detection}


def _pseudo_ground_truth(skeleton: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """The reference's ``PSEUDO_TOP_K`` best detections per image as COCO ground truth."""
    by_image: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    anns = []
    for image_id, dets in by_image.items():
        for det in sorted(dets, key=lambda d: -d["score"])[:PSEUDO_TOP_K]:
            w, h = det["bbox"][2], det["bbox"][3]
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": det["category_id"],
                         "bbox": det["bbox"], "area": float(w * h), "iscrowd": 0})
    return {**skeleton, "annotations": anns}


# ------------------------------------------------------------------------ latency
def measure_latency(models: dict[str, nn.Module], meta: CheckpointMeta, *, runs: int = 20,
                    big_batch: int = 32, warmup: int = 2) -> dict[str, dict[str, float]]:
    """Batch-1 median latency (ms) and batch-``big_batch`` throughput (images/s) of each model.

    The models take turns call by call (interleaved), so machine load hits them alike.
    """
    grid = (meta.image_size // meta.patch_size,) * 2
    small, big = example_patches(meta, 1), example_patches(meta, big_batch, seed=1)
    times: dict[str, dict[str, list[float]]] = {k: {"b1": [], "big": []} for k in models}
    big_runs = max(2, runs // 5)
    with torch.inference_mode():
        for key, batch, n in (("b1", small, runs), ("big", big, big_runs)):
            for i in range(warmup + n):
                for name, module in models.items():
                    start = time.perf_counter()
                    module(batch, grid)
                    if i >= warmup:
                        times[name][key].append(time.perf_counter() - start)
    return {
        name: {"b1_p50_ms": round(statistics.median(t["b1"]) * 1e3, 3),
               f"b{big_batch}_img_per_s": round(big_batch * len(t["big"]) / sum(t["big"]), 2),
               "b1_runs": len(t["b1"]), f"b{big_batch}_runs": len(t["big"])}
        for name, t in times.items()
    }


def judge(compared: dict[str, Any], *, atol: float, metric_tol: float) -> list[str]:
    """Why parity fails (empty: it holds)."""
    failures = [f"max |Δ {name}| {diff:.3g} > {atol:g}"
                for name, diff in compared["max_abs_diff"].items() if not diff <= atol]
    metric = compared["metric"]
    if not metric["abs_diff"] <= metric_tol:
        failures.append(f"{metric['name']} {metric['exported']:.4f} (export) vs "
                        f"{metric['pytorch']:.4f} (PyTorch): differs by more than {metric_tol:g}")
    return failures

