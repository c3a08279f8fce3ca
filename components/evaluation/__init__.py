"""THE evaluator, task-agnostic: top-k accuracy and COCO mAP (pycocotools), the predictions
they are computed from, and the plots. Training (in-loop and final), the promotion gate, the
report, export parity and batch inference all measure through here.
"""

from components.evaluation.evaluator import (
    ClassificationPredictions, DetectionPredictions, classification_metrics, coco_metrics,
    contiguous_to_coco_ids, evaluate_classification, evaluate_detection, load_coco,
    predict_classification, predict_detections,
)
from components.evaluation.plots import plot_confusion_matrix, plot_sample_predictions

__all__ = [
    "ClassificationPredictions", "DetectionPredictions", "classification_metrics", "coco_metrics",
    "contiguous_to_coco_ids", "evaluate_classification", "evaluate_detection", "load_coco",
    "plot_confusion_matrix", "plot_sample_predictions", "predict_classification", "predict_detections",
]
