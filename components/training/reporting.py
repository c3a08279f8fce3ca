"""Checkpoint reporting of the training loop: what a rank hands to ``ray.train.report`` and
how it restores from the checkpoint Ray Train hands back. One job: checkpoint I/O per rank.

A checkpoint directory (merged by Ray Train from every rank's temporary directory):
- rank 0: ``model.safetensors`` + ``vitpipe.json`` (the checkpoint contract, its content the
  task's: for ``task: mae`` the ENCODER as a classifier with no classes, and
  ``mae_decoder.safetensors`` beside it),
  ``optimizer.safetensors`` + ``train_state.json`` (optimizer, scheduler, scaler, progress);
- every rank: ``rng_rank<r>.{safetensors,json}``;
- rank 0, last: ``vitpipe_manifest.json`` (``storage.write_manifest``): a run resumes only
  from a checkpoint that holds every file it names (:func:`resumable_checkpoint`).

Every rank calls :meth:`CheckpointReporter.report` at the same points (Ray Train's report is
a collective). Rank 0's metric logger is flushed up to the reported step only after Ray
Train's controller has registered the checkpoint, so a restarted run never logs a step twice
and MLflow never holds a step that a restart trains again.
"""

from __future__ import annotations

import logging
import tempfile
import time

import torch

from components.core.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from components.tasks import Task, get_task
from components.training import storage
from components.training.config import TrainConfig
from components.training.plan import WorkerPlan
from components.training.state import Progress, load_rng, load_train_state, save_rng, save_train_state
from components.training.tracking import MetricLogger

log = logging.getLogger(__name__)


def restore_from(checkpoint_dir: str, *, task: Task, model: torch.nn.Module, optimizer, scheduler, scaler,
                 rank: int) -> tuple[Progress, dict[str, float]]:
    """Weights, optimizer, scheduler, scaler and this rank's RNG from a checkpoint directory.

    Returns the progress to continue from and the checkpoint's validation metrics.
    """
    state_dict, meta = load_checkpoint(checkpoint_dir, map_location="cpu")
    task.restore_weights(model, state_dict, checkpoint_dir)
    progress = load_train_state(checkpoint_dir, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    load_rng(checkpoint_dir, rank)
    return progress, {k: v for k, v in meta.metrics.items() if k.startswith("val_")}


def resumable_checkpoint(checkpoint):
    """The checkpoint to resume from: the one Ray Train hands back if it is complete, else
    the latest complete one beside it (an upload cut off midway is never resumed from);
    None to start from step 0."""
    if checkpoint is None:
        return None
    fs, path = checkpoint.filesystem, checkpoint.path
    complete, why = storage.checkpoint_complete(fs, path)
    if complete:
        return checkpoint
    from ray.train import Checkpoint

    fallback = storage.latest_complete_checkpoint(fs, path.rstrip("/").rsplit("/", 1)[0])
    log.warning("checkpoint %s is incomplete (%s): resuming from %s", path, why, fallback or "step 0")
    return Checkpoint(fallback, filesystem=fs) if fallback else None


def worst_score(mode: str) -> float:
    return -1e9 if mode == "max" else 1e9


class CheckpointReporter:
    """``report(metrics, with_checkpoint=..., kind=...)`` for one rank of one run.

    ``progress`` is the loop's live :class:`Progress` (mutated by the loop); ``best_val``
    holds the latest validation metrics, carried into every checkpoint's metadata and
    score (the loop updates it after each validation).
    """

    def __init__(self, *, cfg: TrainConfig, plan: WorkerPlan, model: torch.nn.Module, optimizer,
                 scheduler, scaler, rank: int, progress: Progress, logger: MetricLogger,
                 best_val: dict[str, float] | None = None) -> None:
        self.cfg, self.plan, self.model = cfg, plan, model
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.rank, self.progress, self.logger = rank, progress, logger
        self.best_val = dict(best_val or {})
        self.task = get_task(cfg.task)
        self._task_extra = self.task.checkpoint_extra(cfg)

    def meta_for(self, metrics: dict[str, float]) -> CheckpointMeta:
        cfg, plan, model, progress = self.cfg, self.plan, self.model, self.progress
        # What the checkpoint holds is the task's to say (MAE: the encoder as a classifier
        # with no classes, head unused).
        return CheckpointMeta(
            model_name=cfg.model.name, task=self.task.model_task,
            model_config=dict(model.build_config),
            class_names=self.task.checkpoint_classes(plan.class_names), image_size=plan.image_size,
            patch_size=int(model.patch_size), mean=tuple(model.mean), std=tuple(model.std),
            data_fingerprint=plan.fingerprint, step=progress.global_step,
            metrics=metrics, extra={"run_name": cfg.run.name, "mlflow_run_id": plan.mlflow_run_id,
                                    "epoch": progress.epoch, "letterbox": bool(cfg.data.letterbox),
                                    "train_seconds": round(progress.train_seconds, 3),
                                    **self._task_extra},
        )

    def report(self, metrics: dict[str, float], *, with_checkpoint: bool, kind: str = "mid") -> None:
        import ray.train
        from ray.train import Checkpoint

        progress = self.progress
        # reported_at: the worker's clock, so the driver's throughput and ETA do not depend on
        # when the controller gets around to reading the report (it polls every ~2 s)
        metrics = {**metrics, "step": progress.global_step, "epoch": progress.epoch,
                   "samples_seen": progress.samples_seen, "reported_at": time.time()}
        if not with_checkpoint:
            ray.train.report(metrics)
            return
        ckpt_metrics = {**self.best_val, **{k: v for k, v in metrics.items() if k.startswith("val_")}}
        metrics = {**ckpt_metrics, **metrics}
        metrics.setdefault(self.cfg.checkpoint.metric, worst_score(self.cfg.checkpoint.mode))
        with tempfile.TemporaryDirectory(prefix="vitpipe-ckpt-") as tmp:
            save_rng(tmp, self.rank)
            if self.rank == 0:
                save_checkpoint(tmp, self.task.checkpoint_weights(self.model), self.meta_for(ckpt_metrics))
                self.task.save_extra_weights(tmp, self.model)
                save_train_state(tmp, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
                                 progress=progress)
                storage.write_manifest(tmp, world_size=ray.train.get_context().get_world_size())
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_step{progress.global_step:07d}_{kind}")
        if self.logger.enabled:
            # ray.train.report returns before the controller has registered the checkpoint;
            # a restart (a failure, an elastic resize) resumes from the last registered one.
            # Waiting for it here means MLflow only ever holds steps of the run's lineage.
            ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
        self.logger.flush(up_to_step=progress.global_step)  # committed: these steps are final
