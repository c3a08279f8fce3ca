"""What a model's raw outputs become, per task: the Parquet columns of each image.

One small class per task, chosen from :data:`OUTPUTS` by the checkpoint's task. Each turns
a batch of model outputs into Arrow columns (one row per image, lists for the ragged
parts) and names those columns' types (:meth:`fields`), so an empty batch still has the
file's schema.

- classification: ``logits [B, C]`` → ``label``, ``score`` (softmax probability) and the
  ``top_k`` best as ``top_labels``, ``top_ids``, ``top_scores``; with ``keep_logits``
  also ``logits`` (for scoring against ground truth, not written to the Parquet file);
- detection: ``{"pred_logits": [B, Q, C(+1)], "pred_boxes": [B, Q, 4]}`` → ``boxes``
  (``[K, 4]`` xyxy in pixels of the original image), ``scores``, ``label_ids``, ``labels``,
  through the detection task's post-processing (the one Serve and the evaluator use: the
  model's class scores, softmax or sigmoid, its NMS; score threshold, top-k).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import torch

from components.core.checkpoint import CheckpointMeta


class ClassificationOutputs:
    def __init__(self, meta: CheckpointMeta, *, model: torch.nn.Module, top_k: int,
                 keep_logits: bool = False, **_: Any):
        self.names = np.asarray(meta.class_names, dtype=object)
        self.k = min(top_k, len(meta.class_names))
        self.keep_logits = keep_logits

    def fields(self) -> list[pa.Field]:
        out = [pa.field("label", pa.string()), pa.field("score", pa.float32()),
               pa.field("top_labels", pa.list_(pa.string())),
               pa.field("top_ids", pa.list_(pa.int32())),
               pa.field("top_scores", pa.list_(pa.float32()))]
        return out + ([pa.field("logits", pa.list_(pa.float32()))] if self.keep_logits else [])

    def columns(self, logits: torch.Tensor, orig_hw: torch.Tensor) -> dict[str, list]:
        """``logits [B, C]`` → one value per image for each of :meth:`fields`."""
        logits = logits.float().cpu()
        scores, ids = logits.softmax(-1).topk(self.k, dim=-1)
        ids_np, scores_np = ids.numpy().astype(np.int32), scores.numpy().astype(np.float32)
        out = {"label": list(self.names[ids_np[:, 0]]) if len(ids_np) else [],
               "score": list(scores_np[:, 0]) if len(ids_np) else [],
               "top_labels": [list(self.names[row]) for row in ids_np],
               "top_ids": [list(row) for row in ids_np],
               "top_scores": [list(row) for row in scores_np]}
        if self.keep_logits:
            out["logits"] = [list(row) for row in logits.numpy()]
        return out


class DetectionOutputs:
    def __init__(self, meta: CheckpointMeta, *, model: torch.nn.Module, score_threshold: float,
                 max_detections: int, **_: Any):
        self.names = np.asarray(meta.class_names, dtype=object)
        self.model = model  # its own postprocessing settings: class scores, NMS
        self.score_threshold = score_threshold
        self.max_detections = max_detections

    def fields(self) -> list[pa.Field]:
        return [pa.field("boxes", pa.list_(pa.list_(pa.float32(), 4))),
                pa.field("scores", pa.list_(pa.float32())),
                pa.field("label_ids", pa.list_(pa.int32())),
                pa.field("labels", pa.list_(pa.string()))]

    def columns(self, outputs: dict[str, torch.Tensor], orig_hw: torch.Tensor) -> dict[str, list]:
        """Detector outputs + ``orig_hw [B, 2]`` (h, w) → one value per image of :meth:`fields`."""
        from components.tasks import get_task

        outputs = {k: outputs[k].float().cpu() for k in ("pred_logits", "pred_boxes")}
        per_image = get_task("detection").postprocess(
            outputs, model=self.model, orig_hw=orig_hw, score_threshold=self.score_threshold,
            max_detections=self.max_detections)
        out: dict[str, list] = {"boxes": [], "scores": [], "label_ids": [], "labels": []}
        for det in per_image:
            labels = det["labels"].astype(np.int32)
            out["boxes"].append([list(b) for b in det["boxes"].astype(np.float32)])
            out["scores"].append(list(det["scores"].astype(np.float32)))
            out["label_ids"].append(list(labels))
            out["labels"].append(list(self.names[labels]))
        return out


OUTPUTS = {"classification": ClassificationOutputs, "detection": DetectionOutputs}
