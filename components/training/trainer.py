"""The driver side of a training run: :func:`run_training`, for every task, in three steps.

1. :func:`prepare` — before any worker starts: check the (already validated) config against
   the model registry; join Ray; check ``storage_path`` is writable and visible from every
   node; check the MLflow server answers; build the datasets, plan the steps, resolve the
   pretrained weights and the test hooks into one frozen
   :class:`components.training.plan.WorkerPlan`; open the run's ONE MLflow run (a new one,
   or the one the run record beside the checkpoints names: resubmitting ``run.name``
   resumes) and log the resolved config with it;
2. :func:`fit` — the ``TorchTrainer`` (Ray Train restores the last checkpoint of the same
   run name by itself; ``FailureConfig`` replaces dead workers);
3. :func:`finalize` — evaluate the best checkpoint with ``components.evaluation`` (the task's evaluation) on
   the val split, log the report and plots, hand the checkpoint to the registry, end the
   MLflow run, return a summary.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from components.core.config import ConfigError, dump_config, flatten
from components.core.environ import restored_environ
from components.data.config import with_boxes
from components.tasks import get_task
from components.training import storage
from components.training.config import TrainConfig, check_model
from components.training.faults import faults_from_env
from components.training.loop import train_loop_per_worker
from components.training.plan import StepPlan, WorkerPlan, steps_plan
from components.training.tracking import (
    TrackingError, check_tracking_server, log_params_safely, open_run, retry, system_info,
)

log = logging.getLogger(__name__)

POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # Ray Train's controller poll (run.poll_interval_s)
RESOLVED_CONFIG = "config/resolved.yaml"  # the run's config, overrides applied, defaults filled in
SOURCE_CONFIG = "config/source.yaml"  # the config file as given (``config_text``), when there is one


class TrainingError(RuntimeError):
    """The run could not train to the end (after its allowed restarts)."""


def ensure_ray(cfg: TrainConfig | None = None) -> None:
    """Join the cluster of ``RAY_ADDRESS`` (``ray job submit``) or start a local one.

    A local cluster gets enough logical CPUs for the training workers AND the data tasks
    (Ray Data needs at least one free CPU, or the run waits forever): oversubscribing a
    small machine's cores is fine, starving the data pipeline is not.
    """
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        num_cpus = None
        if address is None and cfg is not None:
            need = cfg.scaling.max_workers * cfg.scaling.cpus_per_worker + 2
            num_cpus = int(max(os.cpu_count() or 1, need))
        local = {"_node_ip_address": "127.0.0.1"} if address is None else {}  # loopback only
        # No worker_process_setup_hook for SIGTERM: Ray's worker main loop replaces any
        # handler a hook installs; each training worker arms its own (loop.py).
        ray.init(address=address, num_cpus=num_cpus, configure_logging=False,
                 log_to_driver=True, **local)


def resolve_init(init_from: str, tracking_uri: str | None) -> tuple[dict[str, torch.Tensor], dict]:
    """Pretrained weights → (state, meta dict): a local checkpoint directory, a registered
    ``models:/NAME@ALIAS``, or weights by name, ``timm:<model>[.<tag>]`` /
    ``hf:<org>/<name>[@<revision>]`` (``components.models.hub``, the hub cache)."""
    from dataclasses import asdict

    from components.core.checkpoint import load_checkpoint
    from components.models.hub import HubWeightsError, is_hub_ref, load_hub_weights

    if is_hub_ref(init_from):
        try:
            return load_hub_weights(init_from)
        except HubWeightsError as err:
            raise ConfigError(f"model.init_from={init_from}: {err}") from None
    if init_from.startswith("models:/"):
        from components.tracking.registry import fetch_checkpoint, resolve_uri

        resolved = resolve_uri(init_from, tracking_uri=tracking_uri)
        cache = Path(tempfile.gettempdir()) / "vitpipe-init-cache"
        path = fetch_checkpoint(resolved.name, resolved.version, cache_dir=cache, tracking_uri=tracking_uri)
    else:
        path = Path(os.path.expanduser(init_from))
    state, meta = load_checkpoint(path)
    return state, asdict(meta)


def check_init_weights(cfg: TrainConfig, state: dict[str, torch.Tensor], meta: dict, *,
                       num_classes: int, image_size: int) -> None:
    """On the driver, before any worker starts: build the model the workers will build and
    raise ONE ``ConfigError`` naming every key or shape of ``state`` that would not load
    (classification: every key must match, the pretrained head included; detection:
    detector-only layers may start fresh, a classifier's head is dropped)."""
    from components.models import build_model
    from components.models.hub import weight_mismatches

    overrides = dict(cfg.model.overrides)
    if not with_boxes(get_task(cfg.task).model_task):  # a classifier
        pretrained = dict(meta.get("model_config") or {})
        pretrained.pop("img_size", None)
        classes = pretrained.pop("num_classes", num_classes)
        model = build_model(cfg.model.name, num_classes=classes, img_size=image_size,
                            head=cfg.model.head, **{**pretrained, **overrides})
        problems = weight_mismatches(model, state, allow_missing=False)
    else:
        model = build_model(cfg.model.name, num_classes=num_classes, img_size=image_size,
                            **overrides)
        try:
            adapted = model.pretrained_state(state)
        except ValueError as err:  # a translation that does not fit says why
            raise ConfigError(f"model.init_from={cfg.model.init_from} does not fit {cfg.model.name}: {err}") from None
        problems = weight_mismatches(model, adapted, allow_missing=True, ignore_prefixes=("head.",))
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ConfigError(f"model.init_from={cfg.model.init_from} does not fit {cfg.model.name} "
                          f"({len(problems)} problems):\n  {shown}{more}")


def _log_dataset(uri: str, run_id: str, *, source: str, name: str, digest: str, context: str) -> None:
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.tracking import MlflowClient

    def send():
        try:
            src = resolve_dataset_source(source)
        except Exception:
            from mlflow.data.http_dataset_source import HTTPDatasetSource

            src = HTTPDatasetSource(url=source)
        ds = MetaDataset(source=src, name=name, digest=digest[:36] or None)
        MlflowClient(uri).log_inputs(run_id, datasets=[DatasetInput(
            ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])])

    retry(send, attempts=3, what="log dataset input")


@dataclass(frozen=True)
class PreparedRun:
    """What :func:`prepare` decided and opened; :func:`fit` and :func:`finalize` need no more."""

    plan: WorkerPlan  # what every worker gets (the validated config included)
    storage_path: str  # normalised run storage (local path or URI)
    run_dir: str  # ``<storage_path>/<run.name>``: checkpoints, run record, fault marker
    train: Any  # components.data.dataset.DataBundle of the "train" split
    val: Any  # ... and of the "val" split (in-loop validation, final evaluation)
    started: float  # time.monotonic() when prepare began

    @property
    def cfg(self) -> TrainConfig:
        return self.plan.config


def run_training(cfg: TrainConfig, *, config_text: str | None = None, callbacks: list | None = None,
                 mlflow_tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Train, evaluate and register as ``cfg`` says; returns the run's summary dict
    (:func:`prepare`, then :func:`fit`, then :func:`finalize`).

    ``config_text``: the config file as the user wrote it, logged beside the resolved config;
    ``callbacks``: more Ray Train ``UserCallback``s for the ``TorchTrainer`` (a Tune trial
    passes the one that forwards reports to Tune); ``mlflow_tags``: more tags for a new MLflow
    run (``mlflow.parentRunId`` nests it under a search's run).
    """
    run = prepare(cfg, config_text=config_text, mlflow_tags=mlflow_tags)
    result = fit(run, callbacks=callbacks)
    return finalize(run, result)


def prepare(cfg: TrainConfig, *, config_text: str | None = None,
            mlflow_tags: dict[str, str] | None = None) -> PreparedRun:
    """Everything before the workers start: check the config against the model registry, join
    Ray, check storage and the MLflow server, build the datasets, plan the steps, resolve the
    pretrained weights and the test hooks, then open (or resume) the run's ONE MLflow run and
    log its params, tags, dataset input and resolved config. Raises before any worker starts."""
    check_model(cfg)
    task = get_task(cfg.task)
    started = time.monotonic()
    ensure_ray(cfg)
    import ray
    import ray.data

    from components.data.cached import CachedRows
    from components.data.dataset import build_dataset

    ray.data.DataContext.get_current().enable_progress_bars = False  # progress: ours, per report
    storage_path = storage.check_storage(cfg.run.storage_path)
    run_dir = storage.join(storage_path, cfg.run.name)
    faults = faults_from_env(run_dir)

    uri = cfg.mlflow.resolved_uri() if cfg.mlflow.enabled else None
    if cfg.mlflow.enabled and not uri:
        raise TrackingError("mlflow.enabled but no tracking URI: set mlflow.tracking_uri or "
                            "MLFLOW_TRACKING_URI (or mlflow.enabled=false)")
    if uri:
        check_tracking_server(uri)
    registry_uri = uri or cfg.mlflow.resolved_uri()  # model.init_from may read it, even untracked
    if (cfg.model.init_from or "").startswith("models:/") and not registry_uri:
        raise ConfigError(f"model.init_from={cfg.model.init_from} names a registered model: set "
                          "mlflow.tracking_uri or MLFLOW_TRACKING_URI to the registry's server")

    train = build_dataset(cfg.data, "train", training=True)
    val = build_dataset(cfg.data, "val", training=False)
    num_rows = getattr(train, "num_rows", None) or train.dataset.count()
    try:
        # Planned at the largest size: an elastic run keeps this global batch at every size.
        steps = steps_plan(num_rows, num_workers=cfg.scaling.max_workers, batch_size=cfg.batch_size,
                           grad_accum_steps=cfg.optim.grad_accum_steps, epochs=cfg.epochs,
                           max_steps=cfg.max_steps)
    except ValueError as err:
        raise ConfigError(str(err)) from None

    init_ref, init_meta = None, None
    if cfg.model.init_from:
        state, init_meta = resolve_init(cfg.model.init_from, registry_uri)
        if init_meta.get("source") == cfg.model.init_from:  # weights by name: checked here
            check_init_weights(cfg, state, init_meta, num_classes=len(train.class_names),
                               image_size=cfg.data.image_size)
        init_ref = ray.put(state)
        del state

    run_id = _open_tracked_run(cfg, uri, run_dir, train=train, num_rows=num_rows, steps=steps,
                               config_text=config_text, mlflow_tags=mlflow_tags) if uri else None
    plan = WorkerPlan(
        config=cfg, steps=steps, class_names=tuple(train.class_names), image_size=cfg.data.image_size,
        fingerprint=train.fingerprint, batch_task=task.loader_kind(cfg.data.format), has_val=True,
        tracking_uri=uri, mlflow_run_id=run_id, init_state_ref=init_ref, init_meta=init_meta,
        faults=faults, train_rows=CachedRows.of(train.dataset) if cfg.data.cache else None,
    )
    return PreparedRun(plan=plan, storage_path=storage_path, run_dir=run_dir, train=train, val=val,
                       started=started)


def _open_tracked_run(cfg: TrainConfig, uri: str, run_dir: str, *, train, num_rows: int, steps: StepPlan,
                      config_text: str | None, mlflow_tags: dict[str, str] | None) -> str:
    """Open the run's MLflow run (the one the run record names, when resubmitted), record it
    beside the checkpoints, log params, tags, the dataset input, the config and the skip report."""
    record = storage.read_run_record(run_dir) or {}
    run_id = open_run(uri, cfg.mlflow.experiment, cfg.run.name, record.get("mlflow_run_id"),
                      tags={"vitpipe.task": cfg.task, "vitpipe.model": cfg.model.name, **(mlflow_tags or {})})
    storage.write_run_record(run_dir, {**record, "mlflow_run_id": run_id, "tracking_uri": uri,
                                       "run_name": cfg.run.name})
    log_params_safely(uri, run_id, {**flatten(cfg), "data.num_train_rows": num_rows,
                                    "plan.total_steps": steps.total_steps,
                                    "plan.steps_per_epoch": steps.steps_per_epoch,
                                    "plan.global_batch": cfg.batch_size * cfg.optim.grad_accum_steps
                                    * cfg.scaling.max_workers})
    client = _client(uri)
    for key, value in {**system_info(), "vitpipe.data_fingerprint": train.fingerprint}.items():
        retry(lambda: client.set_tag(run_id, key, value), attempts=3, what="set_tag")
    _log_dataset(uri, run_id, source=str(cfg.data.root or cfg.data.split_paths("train").images),
                 name="train", digest=train.fingerprint, context="training")
    # The config this run trains with: the file, overrides applied, every default filled in.
    resolved = dump_config(cfg)
    retry(lambda: client.log_text(run_id, resolved, RESOLVED_CONFIG), attempts=3, what="log config")
    if config_text is not None:
        retry(lambda: client.log_text(run_id, config_text, SOURCE_CONFIG), attempts=3, what="log config file")
    if train.report is not None:
        retry(lambda: client.log_dict(run_id, _as_dict(train.report), "data/train_skip_report.json"),
              attempts=3, what="log skip report")
    return run_id


def fit(run: PreparedRun, *, callbacks: list | None = None):
    """Run the ``TorchTrainer`` of ``run.plan`` to its end; returns Ray Train's ``Result``.

    Ray Train restores the last checkpoint of the same run name by itself and replaces dead
    workers (``run.max_failures``). A run that still fails ends its MLflow run as FAILED and
    raises :class:`TrainingError`."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from components.training.progress import ProgressCallback

    cfg, plan = run.cfg, run.plan
    resources = dict(cfg.scaling.resources_per_worker)
    resources.setdefault("CPU", cfg.scaling.cpus_per_worker)
    if cfg.scaling.use_gpu:
        resources.setdefault("GPU", 1)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"plan": plan},
        # Cached training rows reach the workers through the plan (components.data.cached).
        datasets={"val": run.val.dataset} if plan.train_rows is not None else
        {"train": run.train.dataset, "val": run.val.dataset},
        dataset_config=DataConfig(execution_options=ingest_options(cfg.data.preserve_order)),
        scaling_config=scaling_config(cfg, resources),
        run_config=RunConfig(
            name=cfg.run.name, **_ray_storage(run.storage_path),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.checkpoint.keep_best_k,
                checkpoint_score_attribute=cfg.checkpoint.metric,
                checkpoint_score_order=cfg.checkpoint.mode,
            ),
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            callbacks=[ProgressCallback(plan.steps.total_steps, cfg.run.name), *(callbacks or [])],
        ),
    )
    try:
        with _controller_env(cfg.run.poll_interval_s):
            result = trainer.fit()
    except Exception as err:
        _end_failed(plan)
        raise TrainingError(f"training run {cfg.run.name!r} failed: {err}") from err
    if result.error is not None:
        _end_failed(plan)
        raise TrainingError(f"training run {cfg.run.name!r} failed: {result.error}")
    return result


@contextlib.contextmanager
def _controller_env(poll_interval_s: float):
    """Ray Train reads its controller's settings from the driver's environment when ``fit``
    starts the controller, and hands them on to it and its workers; set only meanwhile."""
    with restored_environ(POLL_ENV):
        os.environ[POLL_ENV] = repr(float(poll_interval_s))
        yield


def _end_failed(plan: WorkerPlan) -> None:
    if plan.tracked:
        retry(lambda: _client(plan.tracking_uri).set_terminated(plan.mlflow_run_id, status="FAILED"),
              attempts=3, what="end run")


def finalize(run: PreparedRun, result) -> dict[str, Any]:
    """After training: evaluate the best checkpoint on the val split, log the report and its
    plots, hand the checkpoint to the registry, end the MLflow run; returns the summary
    (``run_name, task, model, mlflow_run_id, checkpoint, metrics, registered_version, steps,
    seconds``)."""
    cfg, plan = run.cfg, run.plan
    task = get_task(cfg.task)
    uri, run_id = plan.tracking_uri, plan.mlflow_run_id
    best = _best_checkpoint(result, cfg)
    # The local copy lives only while it is evaluated and registered: the run's checkpoints
    # stay in `storage_path`, and a long-lived driver must not fill its /tmp, one copy a run.
    with tempfile.TemporaryDirectory(prefix=f"vitpipe-{cfg.run.name}-") as local:
        local_dir = Path(local) / "checkpoint"  # evaluate_checkpoint writes its plots beside it
        best.to_directory(str(local_dir))
        report = evaluate_checkpoint(local_dir, run.val, cfg)
        summary_metrics = {k: v for k, v in report.items() if isinstance(v, (int, float))}
        registered_version = None
        if plan.tracked:
            client = _client(uri)
            eval_metrics = {f"eval_{k}": float(v) for k, v in summary_metrics.items()}
            retry(lambda: client.log_batch(run_id, metrics=_metric_list(eval_metrics, report.get("step", 0))),
                  attempts=3, what="log eval metrics")
            retry(lambda: client.log_dict(run_id, report, "eval/report.json"), attempts=3, what="log eval report")
            for png in report.pop("_plots", []):
                retry(lambda: client.log_artifact(run_id, png, "eval"), attempts=3, what="log plot")
            if cfg.registry.enabled and not task.registers:
                log.info("task %s: the checkpoint is a ViT encoder to fine-tune (pipelines.finetune / "
                         "pipelines.detect model.init_from=%s), nothing to serve: not registered",
                         task.name, best.path)
            elif cfg.registry.enabled:
                from components.tracking.registry import register_checkpoint

                registered_version = register_checkpoint(
                    local_dir, task=task.model_task, run_id=run_id, registered_name=cfg.registry.registered_name,
                    tracking_uri=uri, metrics=_primary_metrics(task.metric, summary_metrics),
                    tags={"vitpipe.run_name": cfg.run.name},
                )
            retry(lambda: client.set_terminated(run_id, status="FINISHED"), attempts=3, what="end run")
    report.pop("_plots", None)
    return {
        "run_name": cfg.run.name, "task": cfg.task, "model": cfg.model.name,
        "mlflow_run_id": run_id, "checkpoint": storage.in_storage(run.storage_path, best.path),
        "metrics": summary_metrics, "registered_version": registered_version,
        # the steps trained: fewer than planned when run.max_seconds ran out first
        "steps": int((result.metrics or {}).get("step", plan.steps.total_steps)),
        "seconds": round(time.monotonic() - run.started, 1),
    }


def _ray_storage(storage_path: str) -> dict[str, Any]:
    """``RunConfig`` storage arguments: object storage through a filesystem that retries
    failed uploads with backoff (``storage.train_filesystem``)."""
    fs, path = storage.train_filesystem(storage_path)
    return {"storage_path": path, "storage_filesystem": fs} if fs is not None else {"storage_path": storage_path}


def scaling_config(cfg: TrainConfig, resources: dict[str, float]):
    """Ray Train's ``ScalingConfig``: a fixed worker count, or ``(min, max)`` for elastic
    training, resized at most every ``scaling.resize_interval_s`` seconds."""
    from ray.train import ScalingConfig

    extra = {"elastic_resize_monitor_interval_s": cfg.scaling.resize_interval_s} if cfg.scaling.elastic else {}
    return ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                         resources_per_worker=resources, **extra)


def ingest_options(preserve_order: bool):
    """Ray Data execution options for the shards Ray Train hands its workers.

    Ray Train replaces each dataset's own execution options with these (by default: the
    driver's global ``DataContext``), so ``data.preserve_order`` must be passed here too, or
    rows reach the workers in task-completion order and a seeded run is not repeatable.
    """
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = preserve_order
    return options


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _metric_list(metrics: dict[str, float], step: int):
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]


def _as_dict(report: Any) -> dict:
    if isinstance(report, dict):
        return report
    for attr in ("to_dict", "as_dict", "model_dump"):
        if hasattr(report, attr):
            return getattr(report, attr)()
    from dataclasses import asdict, is_dataclass

    return asdict(report) if is_dataclass(report) else {"report": str(report)}


def _primary_metrics(key: str, metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k in (key, "top1", "top5", "map", "map50", "map75")}


def _best_checkpoint(result, cfg: TrainConfig):
    """The best reported checkpoint by ``checkpoint.metric``; the latest when none scored."""
    best = None
    try:
        best = result.get_best_checkpoint(metric=cfg.checkpoint.metric, mode=cfg.checkpoint.mode)
    except Exception:  # noqa: BLE001 - fall back to the latest
        best = None
    best = best or result.checkpoint
    if best is None:
        raise TrainingError(f"run {cfg.run.name!r} finished without a checkpoint")
    return best


def evaluate_checkpoint(checkpoint_dir: Path, val_bundle, cfg: TrainConfig) -> dict[str, Any]:
    """Evaluate a checkpoint on the val split with the task's evaluation; plots as PNGs."""
    from components.core.checkpoint import read_meta
    from components.core.device import autocast_dtype, pick_device
    from components.data.loader import iter_batches
    from components.models import model_from_checkpoint

    task = get_task(cfg.task)
    if not task.evaluates:  # no classes to score (MAE): the best val loss is the report
        meta = read_meta(checkpoint_dir)
        return {"val_loss": meta.metrics.get("val_loss"), "step": meta.step,
                "checkpoint_metrics": meta.metrics, "_plots": []}
    device = pick_device(prefer_gpu=cfg.scaling.use_gpu)
    model, meta = model_from_checkpoint(checkpoint_dir, device=device)
    amp = autocast_dtype(device, cfg.precision, model)
    batches = iter_batches(val_bundle.dataset, batch_size=cfg.eval.batch_size, task=task.batch_kind)
    report = task.evaluate(model, batches, device=device, amp_dtype=amp, class_names=meta.class_names,
                           coco_gt=_coco_gt(val_bundle),
                           score_threshold=cfg.eval.score_threshold,
                           plots_dir=checkpoint_dir.parent / f"{checkpoint_dir.name}-plots")
    report["step"] = meta.step
    report["checkpoint_metrics"] = meta.metrics
    return report


def _coco_gt(bundle):
    """The val bundle's COCO ground truth (``None`` for a split without boxes)."""
    for attr in ("coco_gt", "coco_gt_path", "coco"):
        try:
            value = getattr(bundle, attr, None)
        except ValueError:  # a bundle without boxes has no COCO file to write
            return None
        if value is not None:
            return value() if callable(value) else value
    return None


def summary_line(summary: dict[str, Any]) -> str:
    return json.dumps(summary, sort_keys=True, default=str)


def copy_tree(src: str, dst: str) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)
