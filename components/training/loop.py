"""The per-worker training loop that Ray Train runs on every rank (1 CPU worker here, N GPU
workers on a cluster: same code, the config decides).

Per rank: the run's task (``components.tasks``) builds the model and its loss
(``prepare_model`` wraps the model in DDP), restore the last checkpoint
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

A time budget (``run.max_seconds``) ends training at the first optimizer step after that many
seconds of fitting, on every rank at the same step; the run then validates, writes its final
checkpoint and finishes as usual. Each checkpoint records the seconds of fitting so far
(``train_seconds``). The cosine follows that clock too (``optim.anneal_to_budget``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from components.core.device import autocast_dtype, needs_grad_scaler, precision_name
from components.tasks import get_task
from components.tasks.base import all_reduce_sum
from components.training.config import TrainConfig, micro_batches_per_step
from components.training.faults import FaultHooks
from components.training.fit_clock import FitClock
from components.training.optim import BudgetClock, build_optimizer, build_scheduler
from components.training.plan import WorkerPlan
from components.training.preemption import Preempted, preemption_notice, stop_requested, stop_requests_armed
from components.training.reporting import CheckpointReporter, restore_from, resumable_checkpoint
from components.training.state import Progress
from components.training.step import StepRunner
from components.training.tracking import MetricLogger

log = logging.getLogger(__name__)


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

    task = get_task(cfg.task)
    init_state = ray.get(plan.init_state_ref) if plan.init_state_ref is not None else None
    model = task.build_model(cfg, num_classes=len(plan.class_names), image_size=plan.image_size,
                             init_state=init_state, init_meta=plan.init_meta)
    del init_state
    base = model
    model = ray.train.torch.prepare_model(model)
    amp = autocast_dtype(device, cfg.precision, base, train=True)
    scaler = torch.amp.GradScaler("cuda") if needs_grad_scaler(amp, device) else None
    optimizer = build_optimizer(base, cfg.optim)
    # The cosine also follows the time budget's clock (run.max_seconds; rank 0's seconds).
    clock = BudgetClock(cfg.run.max_seconds if cfg.optim.anneal_to_budget else None)
    scheduler = build_scheduler(optimizer, cfg.optim, plan.steps.total_steps, clock)
    loss_fn = task.loss(cfg, num_classes=len(plan.class_names), model=base)
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
            progress, best_val = restore_from(ckpt_dir, task=task, model=base, optimizer=optimizer,
                                              scheduler=scheduler, scaler=scaler, rank=rank)
        resumed_world = progress.world_size
        progress.batch_in_epoch = resume_position(progress, cfg, world)
        if rank == 0:
            log.info("resumed at step %d (epoch %d, batch %d) with %d worker(s)%s", progress.global_step,
                     progress.epoch, progress.batch_in_epoch, world,
                     f" (checkpoint written by {resumed_world})" if resumed_world not in (0, world) else "")
    progress.world_size = world
    fit = FitClock(progress, budget_s=cfg.run.max_seconds, schedule_clock=clock, rank=rank, world=world,
                   device=device)
    runner.on_optimizer_step = fit.tick  # the next step's lr follows the seconds up to this one

    logger = MetricLogger(None, None)
    if rank == 0 and plan.tracked:
        # Steps at or below the last one MLflow already holds are never logged again: the
        # controller may restore a checkpoint older than the last one this rank flushed for
        # (a worker killed right after reporting), and those steps are then retrained.
        from components.training.tracking import last_logged_step

        record_precision(plan, cfg.precision, amp)
        last = max(progress.global_step,
                   last_logged_step(plan.tracking_uri, plan.mlflow_run_id, "train_loss"))
        logger = MetricLogger(plan.tracking_uri, plan.mlflow_run_id,
                              max_retries=cfg.mlflow.max_retries, last_step=last,
                              buffer_steps=cfg.mlflow.buffer_steps, drain_timeout_s=cfg.mlflow.drain_timeout_s)

    reporter = CheckpointReporter(cfg=cfg, plan=plan, model=base, optimizer=optimizer, scheduler=scheduler,
                                  scaler=scaler, rank=rank, progress=progress, logger=logger, best_val=best_val)
    report = reporter.report

    # Cached rows (data.cache) come straight from the object store (components.data.cached).
    train_rows = plan.train_rows.shard(rank, world) if plan.train_rows is not None else None
    train_shard = ray.train.get_dataset_shard("train") if train_rows is None else None
    val_shard = ray.train.get_dataset_shard("val") if plan.has_val else None
    steps_per_epoch, total_steps = plan.steps.steps_per_epoch, plan.steps.total_steps
    micro_per_epoch = steps_per_epoch * accum
    global_batch = cfg.batch_size * accum * world  # the same at every world size
    every = cfg.checkpoint.every_n_steps
    batch_task = plan.batch_task
    hooks = FaultHooks(plan.faults, rank=rank, started_at_step=progress.global_step, world_size=world)
    last_progress = time.monotonic()
    # The time budget (run.max_seconds): seconds of fitting, paused while validating and
    # writing checkpoints (``fit.resume()`` after them); see components.training.fit_clock.

    while (progress.global_step < total_steps and progress.epoch < plan.steps.epochs
           and not fit.out_of_time):
        skip = progress.batch_in_epoch
        last_ckpt_step = progress.global_step
        window_loss, window_n = 0.0, 0
        t_window = time.perf_counter()
        for micro, batch in enumerate(train_batches(cfg, shard=train_shard, rows=train_rows,
                                                    epoch=progress.epoch, rank=rank, device=device,
                                                    task=batch_task)):
            # Resumed mid-epoch: batches this rank consumed before the checkpoint are skipped;
            # a trailing remainder shorter than one optimizer step is not trained on.
            if micro < skip or micro >= micro_per_epoch or progress.global_step >= total_steps:
                continue
            fit.start()
            out = runner.micro_step(batch, step=progress.global_step)
            progress.batch_in_epoch = micro + 1
            if not bool(out["stepped"]):
                continue
            progress.global_step += 1
            progress.samples_seen += global_batch
            window_loss += float(out["loss"])
            window_n += 1
            step = progress.global_step
            last_step = step == total_steps or fit.out_of_time
            hooks.at_step(step)
            if step % cfg.run.log_every_n_steps == 0 or last_step:
                elapsed = time.perf_counter() - t_window
                # One collective per log window: the loss sums, and two flags every rank must
                # agree on (stop now; send a progress report, itself a collective call).
                stop_here = stop_requested() or preemption_notice()
                due = time.monotonic() - last_progress >= cfg.run.progress_every_s or last_step
                sums = all_reduce_sum(torch.tensor([window_loss, window_n, stop_here, due],
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
            if (every and step % every == 0 and step != last_ckpt_step and not last_step
                    and progress.batch_in_epoch < micro_per_epoch):
                report({}, with_checkpoint=True)
                last_ckpt_step = step
                fit.resume()
            if fit.out_of_time:
                if rank == 0:
                    log.info("time budget of %.0f s spent at step %d (%.1f s of fitting): finishing",
                             cfg.run.max_seconds, step, progress.train_seconds)
                break
        # End of an epoch (or of the run): validate, checkpoint, go on with the next epoch.
        progress.epoch += 1
        progress.batch_in_epoch = 0
        val = {}
        if val_shard is not None and (progress.epoch % cfg.eval.every_n_epochs == 0
                                      or progress.global_step >= total_steps or fit.out_of_time):
            val = task.validate(base, iter_batches(val_shard, batch_size=cfg.eval.batch_size, task=batch_task,
                                                   drop_last=False, device=device),
                                loss_fn=loss_fn, device=device, amp_dtype=amp)
            reporter.best_val = dict(val)
            logger.log(val, progress.global_step)
        report(val, with_checkpoint=True, kind=f"epoch{progress.epoch}")
        fit.resume()
    logger.close()  # what the sender still holds (the server away): up to mlflow.drain_timeout_s


def train_batches(cfg: TrainConfig, *, shard: Any, rows: dict[str, Any] | None, epoch: int,
                  rank: int, device: torch.device, task: str):
    """This epoch's training batches on ``rank``: from its cached rows (``data.cache``:
    a seeded permutation, each batch augmented here) or from its Ray Data shard."""
    from components.data.loader import iter_batches

    data = cfg.data
    seed = None if data.seed is None else [data.seed, epoch, rank]
    if rows is None:
        return iter_batches(shard, batch_size=cfg.batch_size, task=task, drop_last=True,
                            device=device, multiscale=data.multiscale, multiscale_seed=seed,
                            patch_size=data.patch_size)
    from components.data.batch_augment import BatchAugment, generator_seed
    from components.data.cached import iter_cached_batches

    seed = generator_seed(seed)
    return iter_cached_batches(rows, batch_size=cfg.batch_size, task=task, seed=seed,
                               shuffle=data.shuffle, drop_last=True, device=device,
                               augment=BatchAugment(data.augment, patch_size=data.patch_size, seed=seed))


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


def record_precision(plan: WorkerPlan, requested: str, amp: torch.dtype | None) -> None:
    """The precision this run trains in, as the MLflow param ``precision_used`` (``auto``
    decides by a measurement on the machine: the param says what it chose). Sent from a
    daemon thread: an MLflow server that is away neither delays nor fails training (the
    param is then missing, and a warning logged); a resumed run keeps the param it first
    logged. MLflow's client modules are imported here, before the thread starts: importing
    them from two threads at once leaves ``mlflow.tracking`` half initialised."""
    import threading

    import mlflow.entities  # noqa: F401  (see above)
    import mlflow.tracking  # noqa: F401

    from components.training.tracking import log_params_safely

    used = precision_name(amp)
    log.info("precision: %s (%s requested)", used, requested)

    def send() -> None:
        try:
            log_params_safely(plan.tracking_uri, plan.mlflow_run_id, {"precision_used": used}, attempts=3)
        except Exception as err:  # noqa: BLE001  (the run goes on without the param)
            log.warning("precision_used not logged: %s", err)

    threading.Thread(target=send, name="mlflow-precision", daemon=True).start()
