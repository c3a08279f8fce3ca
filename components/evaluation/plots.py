"""Evaluation plots: confusion matrix and sample predictions, PNGs drawn with matplotlib's
Agg backend from what :mod:`components.evaluation.evaluator` returns."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(
    confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path
) -> Path:
    """Confusion matrix (rows true, columns predicted), row-normalised colours, counts as text."""
    plt = _pyplot()
    matrix = np.asarray(confusion, dtype=np.float64)
    norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.5 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(class_names) <= 30:
        for i in ticks:
            for j in ticks:
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center",
                        color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_sample_predictions(
    samples: Sequence[dict[str, Any]], class_names: Sequence[str], path: str | Path,
    *, score_threshold: float = 0.3,
) -> Path:
    """A grid of sample images with predictions: ``samples`` from ``predict_classification``
    (title: predicted vs true class) or ``predict_detections`` (green true boxes, red
    predicted boxes above ``score_threshold``)."""
    from matplotlib.patches import Rectangle

    plt = _pyplot()
    if not samples:
        raise ValueError("no samples to plot: pass keep_samples > 0 to the predict function")
    cols = min(4, len(samples))
    rows = math.ceil(len(samples) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)

    def name(idx: int) -> str:
        return class_names[idx] if 0 <= idx < len(class_names) else str(idx)

    for ax, sample in zip(axes.flat, samples):
        image = sample["image"]
        h, w = image.shape[:2]
        ax.imshow(image)
        if "logits" in sample:
            pred = int(np.argmax(sample["logits"]))
            ok = pred == sample["label"]
            ax.set_title(f"{name(pred)} / {name(sample['label'])}", fontsize=8,
                         color="green" if ok else "red")
        else:
            for (cx, cy, bw, bh), label in zip(sample["gt_boxes_cxcywh"], sample["gt_labels"]):
                ax.add_patch(Rectangle(((cx - bw / 2) * w, (cy - bh / 2) * h), bw * w, bh * h,
                                       fill=False, edgecolor="lime", linewidth=1.5))
            for (x0, y0, x1, y1), label, score in zip(
                sample["pred_boxes_xyxy"], sample["pred_labels"], sample["pred_scores"]
            ):
                if score < score_threshold:
                    continue
                ax.add_patch(Rectangle((x0 * w, y0 * h), (x1 - x0) * w, (y1 - y0) * h,
                                       fill=False, edgecolor="red", linewidth=1))
                ax.text(x0 * w, y0 * h, f"{name(int(label))} {score:.2f}", color="red",
                        fontsize=6, va="bottom")
        ax.axis("off")
    for ax in list(axes.flat)[len(samples):]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
