"""Time to a target accuracy: train each tiny demo model on the embedded dataset.

Every model trains with the project's own pieces: batches from the data layer
(``build_dataset`` + ``iter_batches``, the training augmentation), the training step
(``StepRunner``: autocast, loss, clipping, AdamW + warmup/cosine), and the shared evaluator
(``evaluate_classification`` top-1 / ``evaluate_detection`` COCO mAP) after every epoch.
The batches are materialised once and replayed for every model, so all models see the
same images in the same order; Ray Train's own overhead is measured by the training
stage's benchmarks, not here. ``train_s`` counts optimizer steps only (evaluation apart).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class TrainingSpec:
    """One model to train: a registered (tiny) name, its build keywords and its task."""

    model: str
    task: str  # "classification" | "detection"
    lr: float
    weight_decay: float
    clip_grad_norm: float
    overrides: dict[str, Any] = field(default_factory=dict)
    match_repeats: int = 1  # detection: one-to-many matching (k queries per box)


@dataclass
class EpochPoint:
    epoch: int
    train_s: float  # cumulative optimizer-step seconds
    metric: float  # top1 or mAP50 on the val split
    loss: float  # mean training loss of the epoch


@dataclass
class TrainingResult:
    model: str
    task: str
    metric_name: str
    target: float
    reached: bool
    time_to_target_s: float | None
    epochs_to_target: int | None
    best_metric: float
    final_metrics: dict[str, float]
    epochs: int
    train_s: float
    train_images_per_s: float
    params: int
    curve: list[EpochPoint] = field(default_factory=list)


@dataclass
class TaskData:
    """Materialised batches of one task: ``train_epochs[e]`` is the e-th augmented pass."""

    task: str
    train_epochs: list[list[dict]]
    val_batches: list[dict]
    num_classes: int
    class_names: list[str]
    image_size: int
    coco_gt: Any = None
    num_train: int = 0


def load_task_data(root: str | Path, task: str, *, image_size: int, batch_size: int,
                   passes: int, seed: int = 0) -> TaskData:
    """Build the train/val datasets of ``task`` from the synthetic ``root`` and materialise them."""
    from components.data.config import DataConfig
    from components.data.dataset import build_dataset
    from components.data.loader import iter_batches

    from components.tasks import get_task

    cfg = DataConfig(format=get_task(task).sample_format, root=str(root), image_size=image_size, patch_size=16, seed=seed)
    train = build_dataset(cfg, "train", training=True)
    val = build_dataset(cfg, "val", training=False)
    epochs = []
    for epoch in range(passes):
        ds = train.dataset if epoch == 0 else train.for_epoch(epoch)
        epochs.append(list(iter_batches(ds, batch_size=batch_size, task=task, device="cpu")))
    val_batches = list(iter_batches(val.dataset, batch_size=64, task=task, device="cpu"))
    return TaskData(
        task=task, train_epochs=epochs, val_batches=val_batches,
        num_classes=len(train.class_names), class_names=list(train.class_names),
        image_size=image_size, coco_gt=getattr(val, "coco_gt", None),
        num_train=train.num_rows,
    )


def evaluate(model, data: TaskData, amp) -> dict[str, float]:
    """The task's evaluation (the shared evaluator), its headline numbers, on the val batches."""
    from components.tasks import get_task

    task = get_task(data.task)
    out = task.evaluate(model, data.val_batches, device="cpu", amp_dtype=amp,
                        class_names=data.class_names, coco_gt=data.coco_gt)
    return {k: float(out.get(k, float("nan"))) for k in task.headline_metrics}


def train_to_target(spec: TrainingSpec, data: TaskData, *, target: float, max_epochs: int,
                    time_budget_s: float, precision: str = "auto", seed: int = 0) -> TrainingResult:
    """Train ``spec.model`` until the val metric reaches ``target`` (or epochs/time run out)."""
    import torch

    from components.core.device import autocast_dtype
    from components.models import build_model
    from components.training.config import OptimSection
    from components.training.optim import build_optimizer, build_scheduler
    from components.tasks import get_task
    from components.training.config import TrainConfig
    from components.training.step import StepRunner

    torch.manual_seed(seed)
    device = torch.device("cpu")
    model = build_model(spec.model, num_classes=data.num_classes, img_size=data.image_size, **spec.overrides)
    amp = autocast_dtype(device, precision, model, train=True)
    task = get_task(spec.task)
    # Only the loss settings are read from this config; the data here is in memory.
    run_cfg = TrainConfig.model_validate({"task": spec.task, "model": {"name": spec.model},
                                          "data": {"root": "in-memory"},
                                          "criterion": {"match_repeats": spec.match_repeats}})
    loss_fn = task.loss(run_cfg, num_classes=data.num_classes, model=model)
    metric_name = task.target_metric
    steps_per_epoch = len(data.train_epochs[0])
    optim_cfg = OptimSection(lr=spec.lr, weight_decay=spec.weight_decay,
                             warmup_steps=min(20, steps_per_epoch * 2), clip_grad_norm=spec.clip_grad_norm)
    optimizer = build_optimizer(model, optim_cfg)
    scheduler = build_scheduler(optimizer, optim_cfg, total_steps=steps_per_epoch * max_epochs)
    runner = StepRunner(model=model, optimizer=optimizer, scheduler=scheduler, loss_fn=loss_fn,
                        device=device, amp_dtype=amp, clip_grad_norm=spec.clip_grad_norm)

    curve: list[EpochPoint] = []
    train_s, images, best = 0.0, 0, float("-inf")
    reached_at: EpochPoint | None = None
    metrics: dict[str, float] = {}
    for epoch in range(max_epochs):
        batches = data.train_epochs[epoch % len(data.train_epochs)]
        losses = []
        start = time.perf_counter()
        for step, batch in enumerate(batches):
            out = runner.micro_step(batch, step=epoch * steps_per_epoch + step)
            losses.append(float(out["loss"]))
            images += int(batch["patches"].shape[0])
        train_s += time.perf_counter() - start
        metrics = evaluate(model, data, amp)
        point = EpochPoint(epoch=epoch + 1, train_s=round(train_s, 3),
                           metric=round(metrics[metric_name], 4),
                           loss=round(sum(losses) / max(1, len(losses)), 4))
        curve.append(point)
        best = max(best, point.metric)
        log.info("%s epoch %d: %s=%.3f loss=%.3f (%.1fs)", spec.model, point.epoch, metric_name,
                 point.metric, point.loss, train_s)
        if point.metric >= target:
            reached_at = point
            break
        if train_s >= time_budget_s:
            break
    return TrainingResult(
        model=spec.model, task=spec.task, metric_name=metric_name, target=target,
        reached=reached_at is not None,
        time_to_target_s=reached_at.train_s if reached_at else None,
        epochs_to_target=reached_at.epoch if reached_at else None,
        best_metric=round(best, 4), final_metrics={k: round(v, 4) for k, v in metrics.items()},
        epochs=len(curve), train_s=round(train_s, 3),
        train_images_per_s=round(images / train_s, 2) if train_s > 0 else 0.0,
        params=sum(p.numel() for p in model.parameters()), curve=curve,
    )


def as_dict(result: TrainingResult) -> dict[str, Any]:
    return asdict(result)
