"""What the driver hands every worker of a run: one frozen, typed :class:`WorkerPlan`.

The driver (``trainer.prepare``) decides everything a worker cannot know on its own or
must agree on with the other ranks: the validated config, how many steps, the class names
and image size of the data, the MLflow run to log into, the pretrained weights to start
from, the test hooks. A worker reads the plan by attribute and assumes nothing else: no
field has a default a worker could silently fall back on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from components.training.config import TrainConfig
from components.training.faults import Faults


@dataclass(frozen=True)
class StepPlan:
    """Optimizer steps of a run, planned at the largest worker count."""

    steps_per_epoch: int
    total_steps: int
    epochs: int  # passes over the data the steps need (the last one maybe cut short)


def steps_plan(num_rows: int, *, num_workers: int, batch_size: int, grad_accum_steps: int,
               epochs: int, max_steps: int | None) -> StepPlan:
    """Optimizer steps per epoch and in total for ``num_rows`` training rows.

    Each worker gets ``num_rows // num_workers`` rows (Ray's equal split), makes
    ``rows // batch_size`` full micro-batches, i.e. ``that // grad_accum_steps`` steps.
    """
    rows = num_rows // num_workers
    steps_per_epoch = (rows // batch_size) // grad_accum_steps
    if steps_per_epoch < 1:
        raise ValueError(
            f"{num_rows} training rows over {num_workers} workers give less than one optimizer "
            f"step per epoch at batch_size {batch_size} × grad_accum_steps {grad_accum_steps}; "
            "lower batch_size or grad_accum_steps"
        )
    total = steps_per_epoch * epochs
    if max_steps is not None:
        total = min(total, max_steps)
    return StepPlan(steps_per_epoch=steps_per_epoch, total_steps=total,
                    epochs=math.ceil(total / steps_per_epoch))


@dataclass(frozen=True)
class WorkerPlan:
    """One run's plan for every rank (``train_loop_config={"plan": plan}``)."""

    config: TrainConfig  # validated on the driver; workers do not validate it again
    steps: StepPlan
    class_names: tuple[str, ...]  # the label order of the data (empty: MAE ignores labels)
    image_size: int  # the model's square input size (``config.data.image_size``)
    fingerprint: str  # of the training data, stored in every checkpoint
    batch_task: Literal["classification", "detection"]  # the batch contract the loader collates
    has_val: bool  # a "val" dataset shard exists
    tracking_uri: str | None  # MLflow server rank 0 logs to; None: untracked
    mlflow_run_id: str | None  # the run's ONE MLflow run
    init_state_ref: Any | None  # ``ray.ObjectRef`` of a pretrained state dict; None: fresh weights
    init_meta: dict[str, Any] | None  # that checkpoint's metadata (its model_config)
    faults: Faults  # test hooks (components.training.faults); off unless $VITPIPE_FAULTS
    # data.cache: the training split's cached blocks (components.data.cached.CachedRows),
    # read by each rank instead of a Ray Data shard; None: the split streams
    train_rows: Any | None

    def __post_init__(self) -> None:
        if self.steps.total_steps < 1 or self.steps.steps_per_epoch < 1:
            raise ValueError(f"WorkerPlan: no step to train ({self.steps})")
        if (self.tracking_uri is None) != (self.mlflow_run_id is None):
            raise ValueError("WorkerPlan: tracking_uri and mlflow_run_id go together")
        if (self.init_state_ref is None) != (self.init_meta is None):
            raise ValueError("WorkerPlan: init_state_ref and init_meta go together")

    @property
    def tracked(self) -> bool:
        return self.mlflow_run_id is not None
