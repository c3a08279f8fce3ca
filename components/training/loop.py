"""The per-worker training loop that Ray Train runs on every rank (1 CPU worker here, N GPU
workers on a cluster: same code, the config decides).

Per rank: build the model (``prepare_model`` wraps it in DDP), restore the last checkpoint
if Ray Train hands one over (weights, optimizer, scheduler, data position, RNG), then train
with :class:`components.training.step.StepRunner` on this rank's dataset shard.

Checkpoints are reported from every rank through
:class:`components.training.reporting.CheckpointReporter` (rank 0: weights in the checkpoint
contract + resume state; every rank: its RNG state; Ray Train merges the directories). Rank 0
logs metrics to the driver's MLflow run, flushing each step's metrics only once the
checkpoint covering it is committed, so a restarted run never logs a step twice.

A stop request (SIGTERM from a node drain or spot preemption, or Ray Train's preemption
notice; :mod:`components.training.preemption`) makes every rank write a checkpoint at the
next log boundary, then raise ``Preempted``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
import torch.distributed as dist

from components.core.device import autocast_dtype, needs_grad_scaler
from components.training.config import TrainConfig, micro_batches_per_step
from components.training.faults import FaultHooks
from components.training.optim import build_optimizer, build_scheduler
from components.training.plan import WorkerPlan
from components.training.preemption import Preempted, preemption_notice, stop_requested, stop_requests_armed
from components.training.reporting import CheckpointReporter, restore_from, resumable_checkpoint
from components.training.state import Progress
from components.training.step import (
    StepRunner, batch_grid, classification_loss, detection_loss, model_computes_loss, model_loss,
)
from components.training.tracking import MetricLogger

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- model setup
def build_task_model(cfg: TrainConfig, *, num_classes: int, image_size: int,
                     init_state: dict[str, torch.Tensor] | None = None,
                     init_meta: dict | None = None) -> torch.nn.Module:
    """The model of this run, optionally initialised from a pretrained checkpoint.

    Fine-tuning (classification from a classifier checkpoint): the pretrained architecture
    at the new ``image_size`` (position embeddings resized by ``load_weights``), then a fresh
    head of ``cfg.model.head`` kind via ``set_head``. Detection from a ViT checkpoint: the
    detector is built as configured (YOLOS takes the ViT's ``stem`` unless the config sets
    one) and its backbone takes the matching weights.
    """
    from components.models import build_model

    overrides = dict(cfg.model.overrides)
    if cfg.task == "mae":  # a fresh ViT encoder inside the masked autoencoder (labels unused)
        from components.models.mae import build_mae

        return build_mae(cfg.model.name, img_size=image_size, head=cfg.model.head, overrides=overrides,
                         **cfg.mae.model_dump(), eval_seed=cfg.run.seed)
    if init_state is None:
        return build_model(cfg.model.name, num_classes=num_classes, img_size=image_size,
                           head=cfg.model.head, **overrides) if cfg.task == "classification" \
            else build_model(cfg.model.name, num_classes=num_classes, img_size=image_size, **overrides)
    from components.models import load_weights

    if cfg.task == "classification":
        from components.models import set_head

        pretrained = dict((init_meta or {}).get("model_config") or {})
        pretrained.pop("img_size", None)
        pre_classes = pretrained.pop("num_classes", num_classes)
        arch = {**pretrained, **overrides}
        model = build_model(cfg.model.name, num_classes=pre_classes, img_size=image_size, **arch)
        load_weights(model, init_state)
        set_head(model, num_classes, kind=cfg.model.head)
        model.build_config = {**model.build_config, "num_classes": num_classes, "head": cfg.model.head}
        return model
    from components.models import get_spec
    from components.models.yolos import Yolos, init_from_classifier

    pretrained_stem = ((init_meta or {}).get("model_config") or {}).get("stem")
    if get_spec(cfg.model.name).family == "yolos" and pretrained_stem and "stem" not in overrides:
        overrides["stem"] = pretrained_stem  # the ViT's stem comes with its weights
    model = build_model(cfg.model.name, num_classes=num_classes, img_size=image_size, **overrides)

    if isinstance(model, Yolos):
        init_from_classifier(model, init_state)
    else:
        missing, _ = load_weights(model, init_state, strict=False)
        log.info("initialised %s from a checkpoint; %d keys kept their fresh init",
                 cfg.model.name, len(missing))
    return model


def make_loss(cfg: TrainConfig, num_classes: int, model: torch.nn.Module | None = None):
    """The run's loss. Detection: our set criterion (``cfg.criterion``), unless the detector
    computes its own losses (``model.computes_loss``), which ``cfg.criterion`` does not reach."""
    if cfg.task == "classification":
        return classification_loss(cfg.optim.label_smoothing)
    if cfg.task == "mae":
        return mae_loss()
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


def mae_loss():
    """``loss_fn(model, batch) -> {"loss_recon"}``: the MAE computes its masked-patch loss
    in its forward (under DDP the wrapped module must run it); labels/boxes are ignored."""

    def loss_fn(model, batch):
        return {"loss_recon": model(batch["patches"], batch_grid(batch))["loss_recon"]}

    loss_fn.weight_dict = {"loss_recon": 1.0}
    return loss_fn


def loader_task(cfg: TrainConfig, data_format: str | None) -> str:
    """The batch contract the loader collates: an MAE reads either format, ignoring labels."""
    if cfg.task != "mae":
        return cfg.task
    from components.data.config import FORMAT_TASK

    return FORMAT_TASK.get(data_format or "", "classification")


# ---------------------------------------------------------------------------- validation
@torch.no_grad()
def validate(model: torch.nn.Module, batches, *, task: str, loss_fn, device: torch.device,
             amp_dtype: torch.dtype | None) -> dict[str, float]:
    """Loss (and top-1 for classifiers) over this rank's val shard, summed over ranks."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # loss*n, correct, n
    ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else _null()
    for batch in batches:
        with ctx:
            if task == "classification":
                logits = model(batch["patches"], batch_grid(batch)).float()
                loss = torch.nn.functional.cross_entropy(logits, batch["label"])
                sums[1] += (logits.argmax(-1) == batch["label"]).sum().item()
            else:
                losses = loss_fn(model, batch)
                loss = sum(losses[k] * w for k, w in loss_fn.weight_dict.items() if k in losses)
        n = batch["patches"].shape[0]
        sums[0] += float(loss) * n
        sums[2] += n
    model.train(was_training)
    sums = _all_reduce_sum(sums, device)
    n = max(1.0, float(sums[2]))
    out = {"val_loss": float(sums[0]) / n}
    if task == "classification":
        out["val_top1"] = float(sums[1]) / n
    return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _all_reduce_sum(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        backend_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
        t = values.to(backend_device)
        dist.all_reduce(t)
        return t.cpu()
    return values


# ----------------------------------------------------------------------------- the loop
def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``. ``loop_config["plan"]``: the driver's
    :class:`components.training.plan.WorkerPlan` (config, step counts, class names, MLflow run...)."""
    plan: WorkerPlan = loop_config["plan"]
    with stop_requests_armed():
        _train(plan.config, plan)


def _train(cfg: TrainConfig, plan: WorkerPlan) -> None:
    import ray.train
    import ray.train.torch

    from components.data.loader import iter_batches

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if cfg.scaling.torch_threads:
        torch.set_num_threads(cfg.scaling.torch_threads)
    torch.manual_seed(cfg.run.seed + rank)

    init_state = ray.get(plan.init_state_ref) if plan.init_state_ref is not None else None
    model = build_task_model(cfg, num_classes=len(plan.class_names), image_size=plan.image_size,
                             init_state=init_state, init_meta=plan.init_meta)
    del init_state
    base = model
    model = ray.train.torch.prepare_model(model)
    amp = autocast_dtype(device, cfg.precision, base, train=True)
    scaler = torch.amp.GradScaler("cuda") if needs_grad_scaler(amp, device) else None
    optimizer = build_optimizer(base, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, plan.steps.total_steps)
    loss_fn = make_loss(cfg, len(plan.class_names), base)
    # The global batch is fixed (batch_size × grad_accum_steps × max workers): a rank of a
    # smaller (elastic) worker group accumulates more micro-batches per optimizer step.
    accum = micro_batches_per_step(cfg.scaling, cfg.optim.grad_accum_steps, world)
    runner = StepRunner(model=model, optimizer=optimizer, scheduler=scheduler, loss_fn=loss_fn,
                        device=device, amp_dtype=amp, grad_accum_steps=accum,
                        clip_grad_norm=cfg.optim.clip_grad_norm, scaler=scaler)

    progress = Progress()
    best_val: dict[str, float] = {}
    checkpoint = resumable_checkpoint(ray.train.get_checkpoint())
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            progress, best_val = restore_from(ckpt_dir, task=cfg.task, model=base, optimizer=optimizer,
                                              scheduler=scheduler, scaler=scaler, rank=rank)
        resumed_world = progress.world_size
        progress.batch_in_epoch = resume_position(progress, cfg, world)
        if rank == 0:
            log.info("resumed at step %d (epoch %d, batch %d) with %d worker(s)%s", progress.global_step,
                     progress.epoch, progress.batch_in_epoch, world,
                     f" (checkpoint written by {resumed_world})" if resumed_world not in (0, world) else "")
    progress.world_size = world

    logger = MetricLogger(None, None)
    if rank == 0 and plan.tracked:
        # Steps at or below the last one MLflow already holds are never logged again: the
        # controller may restore a checkpoint older than the last one this rank flushed for
        # (a worker killed right after reporting), and those steps are then retrained.
        from components.training.tracking import last_logged_step

        last = max(progress.global_step,
                   last_logged_step(plan.tracking_uri, plan.mlflow_run_id, "train_loss"))
        logger = MetricLogger(plan.tracking_uri, plan.mlflow_run_id,
                              max_retries=cfg.mlflow.max_retries, last_step=last,
                              buffer_steps=cfg.mlflow.buffer_steps, drain_timeout_s=cfg.mlflow.drain_timeout_s)

    reporter = CheckpointReporter(cfg=cfg, plan=plan, model=base, optimizer=optimizer, scheduler=scheduler,
                                  scaler=scaler, rank=rank, progress=progress, logger=logger, best_val=best_val)
    report = reporter.report

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if plan.has_val else None
    steps_per_epoch, total_steps = plan.steps.steps_per_epoch, plan.steps.total_steps
    micro_per_epoch = steps_per_epoch * accum
    global_batch = cfg.batch_size * accum * world  # the same at every world size
    every = cfg.checkpoint.every_n_steps
    batch_task = plan.batch_task
    hooks = FaultHooks(plan.faults, rank=rank, started_at_step=progress.global_step, world_size=world)
    last_progress = time.monotonic()

    while progress.global_step < total_steps and progress.epoch < plan.steps.epochs:
        skip = progress.batch_in_epoch
        last_ckpt_step = progress.global_step
        window_loss, window_n = 0.0, 0
        t_window = time.perf_counter()
        seed = cfg.data.seed
        scales = {"multiscale": cfg.data.multiscale, "patch_size": cfg.data.patch_size,
                  "multiscale_seed": None if seed is None else [seed, progress.epoch, rank]}
        for micro, batch in enumerate(iter_batches(train_shard, batch_size=cfg.batch_size,
                                                   task=batch_task, drop_last=True, device=device,
                                                   **scales)):
            # Resumed mid-epoch: batches this rank consumed before the checkpoint are skipped;
            # a trailing remainder shorter than one optimizer step is not trained on.
            if micro < skip or micro >= micro_per_epoch or progress.global_step >= total_steps:
                continue
            out = runner.micro_step(batch, step=progress.global_step)
            progress.batch_in_epoch = micro + 1
            if not bool(out["stepped"]):
                continue
            progress.global_step += 1
            progress.samples_seen += global_batch
            window_loss += float(out["loss"])
            window_n += 1
            step = progress.global_step
            hooks.at_step(step)
            if step % cfg.run.log_every_n_steps == 0 or step == total_steps:
                elapsed = time.perf_counter() - t_window
                # One collective per log window: the loss sums, and two flags every rank must
                # agree on (stop now; send a progress report, itself a collective call).
                stop_here = stop_requested() or preemption_notice()
                due = time.monotonic() - last_progress >= cfg.run.progress_every_s or step == total_steps
                sums = _all_reduce_sum(torch.tensor([window_loss, window_n, stop_here, due],
                                                    dtype=torch.float64), device)
                loss_mean = float(sums[0]) / max(1.0, float(sums[1]))
                metrics = {"train_loss": loss_mean, "lr": float(out["lr"]),
                           "img_per_s": global_batch * window_n / max(elapsed, 1e-9),
                           "world_size": float(world)}
                for key, value in out.items():
                    if key.startswith("loss_") or key == "grad_norm":
                        metrics[f"train_{key}"] = float(value)
                logger.log(metrics, step)
                window_loss, window_n, t_window = 0.0, 0, time.perf_counter()
                hooks.beat(step)
                if sums[2] > 0:
                    report({"stopped": 1.0}, with_checkpoint=True, kind="stop")
                    logger.close(timeout_s=min(30.0, cfg.mlflow.drain_timeout_s))  # within the grace period
                    raise Preempted(f"rank {rank}: stop requested at step {step}; checkpoint written")
                if not (every and step % every == 0) and sums[3] > 0:
                    report(metrics, with_checkpoint=False)
                    last_progress = time.monotonic()
            # Mid-epoch checkpoint, unless the epoch ends here (its end-of-epoch one follows).
            if (every and step % every == 0 and step != last_ckpt_step and step < total_steps
                    and progress.batch_in_epoch < micro_per_epoch):
                report({}, with_checkpoint=True)
                last_ckpt_step = step
        # End of an epoch (or of the run): validate, checkpoint, go on with the next epoch.
        progress.epoch += 1
        progress.batch_in_epoch = 0
        val = {}
        if val_shard is not None and (progress.epoch % cfg.eval.every_n_epochs == 0
                                      or progress.global_step >= total_steps):
            val = validate(base, iter_batches(val_shard, batch_size=cfg.eval.batch_size, task=batch_task,
                                              drop_last=False, device=device),
                           task=cfg.task, loss_fn=loss_fn, device=device, amp_dtype=amp)
            reporter.best_val = dict(val)
            logger.log(val, progress.global_step)
        report(val, with_checkpoint=True, kind=f"epoch{progress.epoch}")
    logger.close()  # what the sender still holds (the server away): up to mlflow.drain_timeout_s


def resume_position(progress: Progress, cfg: TrainConfig, world_size: int) -> int:
    """Micro-batches each of ``world_size`` ranks skips in ``progress.epoch`` to resume there.

    A checkpoint is written after a whole optimizer step, so ``batch_in_epoch`` (per rank,
    at the size that wrote it) is a whole number of steps; the same number of steps over a
    new size (an elastic resize) is that many steps of the new size's micro-batches.
    """
    written_by = progress.world_size or world_size  # 0: a checkpoint from before the field
    if written_by == world_size:
        return progress.batch_in_epoch
    accum = cfg.optim.grad_accum_steps
    steps_in_epoch = progress.batch_in_epoch // micro_batches_per_step(cfg.scaling, accum, written_by)
    return steps_in_epoch * micro_batches_per_step(cfg.scaling, accum, world_size)
