"""Image classification: ViT-family classifiers (and the CNN baseline), cross-entropy,
top-1/top-5 through the evaluator."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from components.tasks.base import Batch, Task
from components.tasks.losses import LossFn, classification_loss


class ClassificationTask(Task):
    name = "classification"
    model_task = "classification"
    batch_kind = "classification"
    metric, direction = "top1", "max"
    val_metric, val_direction = "val_top1", "max"
    serving_outputs = ("logits",)
    headline_metrics, target_metric, sample_format = ("top1", "top5"), "top1", "imagefolder"

    def build_model(self, cfg, *, num_classes, image_size, init_state=None, init_meta=None):
        """Fresh, or fine-tuning from a classifier checkpoint: the pretrained architecture at
        the new ``image_size`` (position embeddings resized by ``load_weights``), then a fresh
        head of ``cfg.model.head`` kind via ``set_head``."""
        from components.models import build_model, load_weights, set_head

        overrides = dict(cfg.model.overrides)
        if init_state is None:
            return build_model(cfg.model.name, num_classes=num_classes, img_size=image_size,
                               head=cfg.model.head, **overrides)
        pretrained = dict((init_meta or {}).get("model_config") or {})
        pretrained.pop("img_size", None)
        pre_classes = pretrained.pop("num_classes", num_classes)
        arch = {**pretrained, **overrides}
        model = build_model(cfg.model.name, num_classes=pre_classes, img_size=image_size, **arch)
        load_weights(model, init_state)
        set_head(model, num_classes, kind=cfg.model.head)
        model.build_config = {**model.build_config, "num_classes": num_classes, "head": cfg.model.head}
        return model

    def loss(self, cfg, *, num_classes, model=None) -> LossFn:
        return classification_loss(cfg.optim.label_smoothing)

    def _val_batch(self, model, batch: Batch, loss_fn):
        from components.core.batch import batch_grid

        logits = model(batch["patches"], batch_grid(batch)).float()
        loss = torch.nn.functional.cross_entropy(logits, batch["label"])
        return loss, (logits.argmax(-1) == batch["label"]).sum().item()

    def _val_metrics(self, loss, accuracy):
        return {"val_loss": loss, "val_top1": accuracy}

    def postprocess(self, outputs, *, model, orig_hw, score_threshold, max_detections):
        """``{"probabilities": [C]}`` per image (softmax of the logits)."""
        probabilities = torch.softmax(outputs, dim=-1).numpy()
        return [{"probabilities": row} for row in probabilities]

    def output_specs(self, *, num_classes, top_k, max_detections):
        k = min(top_k, num_classes)
        return [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, num_classes]},
            {"name": "top_labels", "datatype": "INT64", "shape": [-1, k]},
            {"name": "top_scores", "datatype": "FP32", "shape": [-1, k]},
        ]

    def evaluate(self, model, batches, *, device, amp_dtype, class_names, coco_gt=None,
                 score_threshold=0.0, plots_dir: str | os.PathLike | None = None) -> dict[str, Any]:
        """Top-1/top-5 and the confusion matrix (``classification_metrics``)."""
        import components.evaluation as ev

        preds = ev.predict_classification(model, batches, device=device, autocast_dtype=amp_dtype,
                                          keep_samples=8 if plots_dir else 0)
        report = ev.classification_metrics(preds.logits, preds.labels, num_classes=len(class_names))
        if plots_dir is not None:
            report["class_names"] = list(class_names)
            plots_dir = Path(plots_dir)
            plots = [str(ev.plot_confusion_matrix(report["confusion"], class_names,
                                                  plots_dir / "confusion_matrix.png"))]
            if preds.samples:
                plots.append(str(ev.plot_sample_predictions(preds.samples, class_names,
                                                            plots_dir / "sample_predictions.png")))
            report["_plots"] = plots
        return report
