"""The driver's side of the answers, per task: COCO results and metrics against ground truth.

Predictions stream past :meth:`add` as Arrow tables (good images only); :meth:`finish`
returns the metrics of the training evaluator (:mod:`components.evaluation`) when
the source is a labelled split, else ``None``, and the extra files it wrote.

- classification: with labels, the logits of every image are kept (``N × C`` floats) for
  :func:`~components.evaluation.classification_metrics` (top-1, top-5, confusion);
- detection: every box becomes a COCO result (``image_id``, ``category_id``, ``bbox`` xywh
  in original pixels, ``score``), written to ``coco_results.json``; with ground truth,
  :func:`~components.evaluation.coco_metrics` scores them over the predicted images.
  Category ids are the split's COCO ids, or ``class index + 1`` for images without ground
  truth.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from components.core.checkpoint import CheckpointMeta
from components.predict.sources import Source

Writer = Callable[[str, bytes], str]  # (file name, bytes) → where it was written


class ClassificationResults:
    def __init__(self, source: Source, meta: CheckpointMeta):
        self.num_classes = len(meta.class_names)
        self.labels = ({int(r["image_id"]): int(r["label"]) for r in source.bundle.records}
                       if source.bundle is not None else None)
        self.logits: list[np.ndarray] = []
        self.targets: list[int] = []

    @property
    def keep_logits(self) -> bool:
        return self.labels is not None

    def add(self, table: pa.Table) -> None:
        if self.labels is None or not table.num_rows:
            return
        self.logits.append(np.asarray(table.column("logits").to_pylist(), np.float32))
        self.targets.extend(self.labels[i] for i in table.column("image_id").to_pylist())

    def finish(self, write: Writer) -> tuple[dict[str, Any] | None, dict[str, str]]:
        from components.evaluation import classification_metrics

        if self.labels is None or not self.targets:
            return None, {}
        metrics = classification_metrics(np.concatenate(self.logits), np.asarray(self.targets),
                                         num_classes=self.num_classes)
        return metrics, {}


class DetectionResults:
    keep_logits = False

    def __init__(self, source: Source, meta: CheckpointMeta):
        bundle = source.bundle
        ids = getattr(bundle, "category_ids", None)
        self.category_ids = list(ids) if ids else list(range(1, len(meta.class_names) + 1))
        self.ground_truth = getattr(bundle, "coco_gt", None)
        self.results: list[dict[str, Any]] = []
        self.image_ids: list[int] = []

    def add(self, table: pa.Table) -> None:
        import torch

        from components.data.boxes import xyxy_to_coco

        rows = table.select(["image_id", "boxes", "scores", "label_ids"]).to_pylist()
        for row in rows:
            self.image_ids.append(int(row["image_id"]))
            xyxy = torch.tensor(row["boxes"], dtype=torch.float32).reshape(-1, 4)
            for box, score, label in zip(xyxy_to_coco(xyxy).tolist(), row["scores"],
                                         row["label_ids"]):
                category = self.category_ids[label] if 0 <= label < len(self.category_ids) else -1
                if category < 0:  # a model class the split has no category for
                    continue
                self.results.append({
                    "image_id": int(row["image_id"]), "category_id": int(category),
                    "bbox": [round(float(v), 3) for v in box], "score": float(score)})

    def finish(self, write: Writer) -> tuple[dict[str, Any] | None, dict[str, str]]:
        from components.evaluation import coco_metrics

        path = write("coco_results.json", json.dumps(self.results).encode())
        if self.ground_truth is None or not self.image_ids:
            return None, {"coco_results": path}
        metrics = coco_metrics(self.results, self.ground_truth, image_ids=self.image_ids)
        return metrics, {"coco_results": path}


RESULTS = {"classification": ClassificationResults, "detection": DetectionResults}
