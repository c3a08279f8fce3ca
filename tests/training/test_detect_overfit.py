"""Overfit one batch with every tiny detector: the loss falls and mAP on that batch rises
well above 0 (the classic "mAP stuck at 0" failure — boxes in the wrong format, classes off
by one, the no-object class predicted — is caught here, through the real data layer,
criterion, training step and evaluator)."""

from __future__ import annotations

import pytest
import torch

from components.data.config import DataConfig
from components.data.dataset import build_dataset
from components.data.loader import iter_batches
from components.models import build_model
from components.models.criterion import build_criterion
import components.evaluation as ev
from components.training.config import OptimSection
from components.training.optim import build_optimizer, build_scheduler
from components.tasks.losses import detection_loss
from components.training.step import StepRunner


@pytest.fixture(scope="module")
def one_batch(ray_cluster, synth_dataset):
    cfg = DataConfig(format="coco", root=str(synth_dataset), image_size=64, validate_images=False,
                     max_boxes=8, shuffle=False)
    bundle = build_dataset(cfg, "train", training=False)
    batch = next(iter(iter_batches(bundle.dataset, batch_size=4, task="detection", device="cpu")))
    return bundle, batch


@pytest.mark.slow
@pytest.mark.parametrize("name", ["yolos_demo", "detr_demo"])
def test_overfit_one_batch(name, one_batch):
    bundle, batch = one_batch
    torch.manual_seed(0)
    num_classes = len(bundle.class_names)
    model = build_model(name, num_classes=num_classes, img_size=64)
    optim = OptimSection(lr=1.5e-3, weight_decay=0.0, warmup_steps=3, schedule="constant",
                         clip_grad_norm=0.1)
    optimizer = build_optimizer(model, optim)
    runner = StepRunner(model=model, optimizer=optimizer, scheduler=build_scheduler(optimizer, optim, 60),
                        loss_fn=detection_loss(build_criterion(num_classes)), device=torch.device("cpu"),
                        clip_grad_norm=0.1)

    def map50() -> float:
        preds = ev.predict_detections(model, [batch], bundle.coco_gt, device="cpu")
        return ev.coco_metrics(preds.results, bundle.coco_gt, image_ids=preds.image_ids)["map50"]

    before = map50()
    losses = [float(runner.micro_step(batch, step=s)["loss"]) for s in range(60)]
    after = map50()
    assert sum(losses[-5:]) / 5 < 0.4 * sum(losses[:3]) / 3, losses
    assert after > 0.3, (before, after)
    assert after > before + 0.2
