"""Object detection: DETR, YOLOS and the transformers detectors; the set criterion (or the
detector's own losses), COCO mAP through the evaluator."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from components.tasks.base import Task
from components.tasks.losses import LossFn, detection_loss, model_computes_loss, model_loss

log = logging.getLogger(__name__)


class DetectionTask(Task):
    name = "detection"
    model_task = "detection"
    batch_kind = "detection"
    metric, direction = "map", "max"
    serving_outputs = ("pred_logits", "pred_boxes")
    headline_metrics, target_metric, sample_format = ("map", "map50", "map75"), "map50", "coco"

    def checkpoint_ranking(self, metric, mode):
        # In-loop validation of detectors is the val loss; mAP is the final evaluation.
        return ("val_loss", "min") if metric.startswith("val_top") else (metric, mode)

    def build_model(self, cfg, *, num_classes, image_size, init_state=None, init_meta=None):
        """As configured; from a ViT checkpoint, YOLOS takes the ViT's ``stem`` (unless the
        config sets one) and every detector's backbone takes the matching weights."""
        from components.models import build_model

        overrides = dict(cfg.model.overrides)
        if init_state is None:
            return build_model(cfg.model.name, num_classes=num_classes, img_size=image_size, **overrides)
        from components.models import get_spec

        pretrained_stem = ((init_meta or {}).get("model_config") or {}).get("stem")
        if get_spec(cfg.model.name).family == "yolos" and pretrained_stem and "stem" not in overrides:
            overrides["stem"] = pretrained_stem  # the ViT's stem comes with its weights
        model = build_model(cfg.model.name, num_classes=num_classes, img_size=image_size, **overrides)
        missing = model.init_from_pretrained(init_state)
        log.info("initialised %s from a checkpoint; %d keys kept their fresh init", cfg.model.name, len(missing))
        return model

    def loss(self, cfg, *, num_classes, model=None) -> LossFn:
        """Our set criterion (``cfg.criterion``), unless the detector computes its own losses
        (``model.computes_loss``), which ``cfg.criterion`` does not reach."""
        if model is not None and model_computes_loss(model):
            default = type(cfg.criterion)()
            changed = sorted(k for k in type(cfg.criterion).model_fields
                             if getattr(cfg.criterion, k) != getattr(default, k))
            if changed:
                log.warning("%s trains with its own losses; criterion settings %s do not apply",
                            cfg.model.name, changed)
            return model_loss()
        from components.models.criterion import build_criterion

        return detection_loss(build_criterion(num_classes, **cfg.criterion.model_dump()))

    def postprocess(self, outputs, *, model, orig_hw, score_threshold, max_detections):
        """``{"boxes": [K, 4] xyxy original pixels, "scores": [K], "labels": [K]}`` per image
        (the model's own postprocessing settings: class scores, NMS)."""
        from components.models.postprocess import detection_settings, detections

        found = detections(outputs, orig_hw, score_threshold=score_threshold, top_k=max_detections,
                           **detection_settings(model))
        return [{"boxes": d["boxes"].float().numpy(), "scores": d["scores"].float().numpy(),
                 "labels": d["labels"].numpy()} for d in found]

    def output_specs(self, *, num_classes, top_k, max_detections):
        return [
            {"name": "boxes", "datatype": "FP32", "shape": [-1, max_detections, 4]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, max_detections]},
            {"name": "labels", "datatype": "INT64", "shape": [-1, max_detections]},
            {"name": "num_detections", "datatype": "INT32", "shape": [-1]},
        ]

    def evaluate(self, model, batches, *, device, amp_dtype, class_names, coco_gt=None,
                 score_threshold=0.0, plots_dir: str | os.PathLike | None = None) -> dict[str, Any]:
        """COCO mAP / mAP50 / mAP75 / per-class AP against ``coco_gt`` (``coco_metrics``)."""
        import components.evaluation as ev

        if coco_gt is None:
            raise ValueError("detection evaluation needs the split's COCO ground truth")
        preds = ev.predict_detections(model, batches, coco_gt, device=device, autocast_dtype=amp_dtype,
                                      score_threshold=score_threshold, keep_samples=8 if plots_dir else 0)
        report = ev.coco_metrics(preds.results, coco_gt, image_ids=preds.image_ids, class_names=class_names)
        if plots_dir is not None:
            report["_plots"] = ([str(ev.plot_sample_predictions(
                preds.samples, class_names, Path(plots_dir) / "sample_predictions.png"))]
                if preds.samples else [])
        return report
