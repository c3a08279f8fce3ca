"""The search driver: :func:`run_tune` runs (or resumes) one Ray Tune experiment.

1. join or start Ray, check ``run.storage_path``; the search lives in ``<storage>/<run.name>``
   (its records), ``<storage>/<run.name>/trials`` (each trial's training run) and
   ``<storage>/<run.name>/tune`` (what Tune writes);
2. open the search's MLflow run (the parent), or reopen the one the record beside the
   experiment names (``vitpipe_run.json``, as a training run's): a resumed search logs into the same run;
3. open the trial record (:mod:`components.tune.record`, JSON): a new search draws its trials
   from the seeded space; a resumed one keeps the trials that ended and runs the others
   with the values they were drawn with (their training resumes from its last checkpoint).
   Each driver runs a new ``Tuner`` (ASHA) over its trials; Tune's pickled experiment
   state is never read back;
4. after the last trial: mark each child run KILLED (stopped early by ASHA) or FAILED, pick
   the best finished trial, register its checkpoint (no alias is moved) with the sampled
   values as version tags, log the outcome on the parent run and end it.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from components.core.config import dump_config, flatten
from components.tracking.registry import DEFAULT_NAMES
from components.training import storage
from components.training.tracking import TrackingError, check_tracking_server, log_params_safely, open_run, retry
from components.tune.config import TuneConfig
from components.tune.record import TrialRecord
from components.tune.trial import (CHECKPOINT_KEY, DONE_KEY, PARENT_TAG, RUN_ID_KEY, TRIAL_KEY, TRIAL_TAG,
                                   make_trainable)

log = logging.getLogger(__name__)

class TuneError(RuntimeError):
    """The search ran, but no trial trained to its end."""


def trial_cpus(cfg: TuneConfig) -> float:
    """CPUs one trial holds: its training workers, its data tasks and its own process."""
    s = cfg.scaling
    return s.max_workers * s.resources_per_worker.get("CPU", s.cpus_per_worker) + cfg.search.data_cpus \
        + cfg.search.driver_cpus


def default_concurrency(cfg: TuneConfig, cluster: dict[str, float]) -> int:
    """How many trials the cluster's CPUs (and GPUs, for GPU training) run side by side."""
    fits = int(cluster.get("CPU", 0) // trial_cpus(cfg))
    if cfg.scaling.use_gpu:
        gpus = cfg.scaling.max_workers * cfg.scaling.resources_per_worker.get("GPU", 1)
        fits = min(fits, int(cluster.get("GPU", 0) // gpus))
    return max(1, fits)


def _absolute_paths(raw: dict[str, Any]) -> dict[str, Any]:
    """Local relative paths of the base config → absolute: trials run in Tune's trial dirs."""
    data = raw.get("data") or {}
    if isinstance(data.get("root"), str):
        data["root"] = storage.normalize(data["root"])
    for split in (data.get("splits") or {}).values():
        for key in ("images", "annotations"):
            if isinstance(split, dict) and isinstance(split.get(key), str):
                split[key] = storage.normalize(split[key])
    init = raw["model"].get("init_from")
    if init and not init.startswith(("models:/", "timm:", "hf:")):  # names stay names
        raw["model"]["init_from"] = storage.normalize(init)
    return raw


def _scheduler(cfg: TuneConfig, metric: str, mode: str):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    asha = cfg.search.scheduler
    if not asha.enabled:
        return FIFOScheduler()
    max_t = asha.max_t or cfg.max_steps or 10**9
    return ASHAScheduler(time_attr="step", metric=metric, mode=mode, max_t=max_t,
                         grace_period=min(asha.grace_period, max_t), reduction_factor=asha.reduction_factor)


def _open_parent(cfg: TuneConfig, uri: str, exp_dir: str) -> str:
    from mlflow.tracking import MlflowClient

    record = storage.read_run_record(exp_dir) or {}
    run_id = open_run(uri, cfg.mlflow.experiment, cfg.run.name, record.get("mlflow_run_id"),
                      tags={"vitpipe.task": cfg.task, "vitpipe.model": cfg.model.name,
                            "vitpipe.tune.role": "search"})
    storage.write_run_record(exp_dir, {**record, "mlflow_run_id": run_id, "tracking_uri": uri,
                                       "run_name": cfg.run.name})
    search = cfg.search
    params = {f"search.{k}": v for k, v in flatten(search.model_dump(mode="json", exclude={"space"})).items()}
    params.update({f"search.space.{k}": d.describe() for k, d in search.space.items()})
    log_params_safely(uri, run_id, {**flatten(cfg.base()), **params})
    client = MlflowClient(uri)
    retry(lambda: client.log_text(run_id, dump_config(cfg), "config/tune.yaml"), attempts=3, what="log config")
    return run_id


class RecordTrials:
    """Tune callback hooks (the ``Callback`` base is added by :func:`record_callback`) that
    write each trial's start and end to the search's :class:`TrialRecord`."""

    def __init__(self, record: TrialRecord, metric: str) -> None:
        self.record = record
        self.metric = metric

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.record.update(trial.config[TRIAL_KEY], status="RUNNING")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.record.update(trial.config[TRIAL_KEY], **_outcome(trial.last_result or {}, None, self.metric))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        error = getattr(trial, "error_msg", None) or "the trial raised an error"
        self.record.update(trial.config[TRIAL_KEY], **_outcome(trial.last_result or {}, error, self.metric))


def _trial_name(search: str, trial) -> str:
    return f"{search}-{trial.config[TRIAL_KEY]}"


def record_callback(record: TrialRecord, metric: str):
    """A ``ray.tune.Callback`` that keeps ``record`` up to date."""
    from ray.tune import Callback

    return type("RecordTrialsCallback", (RecordTrials, Callback), {})(record, metric)


def _tuner(cfg: TuneConfig, trainable, record: TrialRecord, to_run: list[dict[str, Any]], storage_path: str,
           metric: str, mode: str):
    """A new Tuner over the trials ``to_run`` (their values drawn already: one grid point each).

    Tune's own experiment state goes to ``<run.name>/tune/attempt-<n>``, one folder per
    driver; it is never read back: a resumed search starts from the trial record.
    """
    import ray
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    concurrency = cfg.search.max_concurrent_trials or default_concurrency(cfg, ray.cluster_resources())
    log.info("search %s: %d of %d trials to run, at most %d at a time, %s by %s (%s)", cfg.run.name,
             len(to_run), len(record.trials), concurrency, mode, metric,
             type(_scheduler(cfg, metric, mode)).__name__)
    return tune.Tuner(
        trainable,
        param_space={TRIAL_KEY: tune.grid_search([t["trial_id"] for t in to_run])},
        tune_config=tune.TuneConfig(
            num_samples=1, scheduler=_scheduler(cfg, metric, mode),
            search_alg=BasicVariantGenerator(max_concurrent=concurrency),
            trial_name_creator=partial(_trial_name, cfg.run.name),
            trial_dirname_creator=partial(_trial_name, cfg.run.name),
        ),
        run_config=tune.RunConfig(name=f"attempt-{record.data['attempts']}",
                                  storage_path=storage.join(storage_path, cfg.run.name, "tune"),
                                  failure_config=tune.FailureConfig(max_failures=0),
                                  callbacks=[record_callback(record, metric)]),
    )


def run_tune(cfg: TuneConfig) -> dict[str, Any]:
    """Run or resume the search ``cfg`` describes; returns its summary (trials, best, version)."""
    from ray import tune

    from components.training.trainer import ensure_ray

    started = time.monotonic()
    base = cfg.base()
    ensure_ray(base)
    storage_path = storage.check_storage(cfg.run.storage_path)
    exp_dir = storage.join(storage_path, cfg.run.name)
    metric, mode = cfg.objective()

    uri = cfg.mlflow.resolved_uri() if cfg.mlflow.enabled else None
    if cfg.mlflow.enabled and not uri:
        raise TrackingError("mlflow.enabled but no tracking URI: set mlflow.tracking_uri or "
                            "MLFLOW_TRACKING_URI (or mlflow.enabled=false)")
    parent = None
    if uri:
        check_tracking_server(uri)
        parent = _open_parent(cfg, uri, exp_dir)

    record = TrialRecord.open(exp_dir, cfg.search)
    to_run = record.to_run(cfg.search.resume_errored)
    if record.resumed:
        log.info("resuming search %s from its trial record %s: %d of %d trials to run", cfg.run.name,
                 record.path, len(to_run), len(record.trials))
    raw = _absolute_paths(base.model_dump(mode="json"))
    if uri:
        raw["mlflow"]["tracking_uri"] = uri  # the trials' processes may not share this environment
    if to_run:
        trainable = tune.with_resources(
            make_trainable(raw, {t["trial_id"]: t["config"] for t in to_run}, search_name=cfg.run.name,
                           metric=metric, trials_storage=storage.join(exp_dir, "trials"), parent_run_id=parent),
            {"CPU": cfg.search.driver_cpus})
        results = _tuner(cfg, trainable, record, to_run, storage_path, metric, mode).fit()
        for result in results:  # the callback saw each end already; the results are the last word
            trial_id = (result.config or {}).get(TRIAL_KEY)
            if trial_id is not None:
                error = None if result.error is None else str(result.error)
                record.update(trial_id, **_outcome(result.metrics or {}, error, metric))

    trials = [dict(t) for t in record.trials]
    finished = [t for t in trials if t["status"] == "FINISHED" and t["metric"] is not None]
    best = (max if mode == "max" else min)(finished, key=lambda t: t["metric"]) if finished else None
    if uri and parent:
        _close_children(uri, parent, trials)
        for trial in trials:
            record.trial(trial["trial_id"])["mlflow_run_id"] = trial["mlflow_run_id"]
        record.write()
    registered = None
    if best is not None and cfg.registry.enabled and uri and cfg.task in DEFAULT_NAMES:  # MAE: nothing to serve
        record = storage.read_run_record(exp_dir) or {}
        registered = record.get("registered_version") or _register_best(cfg, uri, parent, best)
        storage.write_run_record(exp_dir, {**record, "registered_version": registered})
    summary = {
        "search": cfg.run.name, "task": cfg.task, "metric": metric, "mode": mode,
        "scheduler": type(_scheduler(cfg, metric, mode)).__name__, "parent_run_id": parent,
        "trials": trials, "best": best, "registered_version": registered,
        "seconds": round(time.monotonic() - started, 1),
    }
    if uri and parent:
        _log_outcome(uri, parent, summary)
    if best is None:
        raise TuneError(f"search {cfg.run.name!r}: none of {len(trials)} trials trained to its end "
                        f"({', '.join(sorted({t['status'] for t in trials}))})")
    return summary


def _outcome(metrics: dict[str, Any], error: str | None, metric: str) -> dict[str, Any]:
    """A trial's record fields from its last Tune result: FINISHED when it reported
    ``vitpipe_done`` after its evaluation, else FAILED (an error) or KILLED (stopped by ASHA)."""
    done = bool(metrics.get(DONE_KEY))
    status = "FINISHED" if done else ("FAILED" if error is not None else "KILLED")
    value = metrics.get(metric)
    out = {
        "status": status, "metric": None if value is None else float(value),
        "step": metrics.get("step"),
        "eval": {k: v for k, v in metrics.items() if k.startswith("eval_")},
        "checkpoint": metrics.get(CHECKPOINT_KEY) if done else None,
        "error": None if error is None or done else error.strip().splitlines()[0][:300],
    }
    if metrics.get(RUN_ID_KEY):
        out["mlflow_run_id"] = metrics[RUN_ID_KEY]
    return out


def _close_children(uri: str, parent: str, trials: list[dict[str, Any]]) -> None:
    """Each child run still RUNNING ended as its trial did: KILLED by ASHA, or FAILED."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp_id = client.get_run(parent).info.experiment_id
    children = client.search_runs([exp_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'")
    by_trial = {r.data.tags.get(TRIAL_TAG): r for r in children}
    for trial in trials:
        run = by_trial.get(trial["trial_id"])
        if run is None:
            continue
        trial["mlflow_run_id"] = run.info.run_id
        if run.info.status == "RUNNING" and trial["status"] != "FINISHED":
            retry(lambda: client.set_terminated(run.info.run_id, status=trial["status"]),
                  attempts=3, what="end trial run")


def _register_best(cfg: TuneConfig, uri: str | None, parent: str | None, best: dict[str, Any]) -> str:
    from ray.train import Checkpoint

    from components.tracking.registry import register_checkpoint

    fs, inner = storage.filesystem(storage.normalize(best["checkpoint"]))
    tags = {f"tune.{k}": str(v) for k, v in best["config"].items()}
    tags.update({"vitpipe.tune.search": cfg.run.name, "vitpipe.tune.trial_id": best["trial_id"]})
    if parent:
        tags["vitpipe.tune.parent_run_id"] = parent
    with tempfile.TemporaryDirectory(prefix=f"vitpipe-tune-{cfg.run.name}-") as local:
        local_dir = Path(local) / "checkpoint"
        Checkpoint(path=inner, filesystem=fs).to_directory(str(local_dir))
        metrics = {k[len("eval_"):]: v for k, v in best["eval"].items()}
        return register_checkpoint(local_dir, task=cfg.task, run_id=best["mlflow_run_id"],
                                   registered_name=cfg.registry.registered_name, tracking_uri=uri,
                                   metrics=metrics or None, tags=tags)


def _log_outcome(uri: str, parent: str, summary: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    best = summary["best"]
    counts = {s: sum(t["status"] == s for t in summary["trials"]) for s in ("FINISHED", "KILLED", "FAILED")}
    metrics = {f"trials_{s.lower()}": float(n) for s, n in counts.items()}
    if best is not None and best["metric"] is not None and math.isfinite(best["metric"]):
        metrics[f"best_{summary['metric']}"] = best["metric"]
    for key, value in metrics.items():
        retry(lambda: client.log_metric(parent, key, value), attempts=3, what="log search metric")
    tags = {"vitpipe.tune.scheduler": summary["scheduler"]}
    if best is not None:
        tags.update({"vitpipe.tune.best_trial": best["trial_id"],
                     "vitpipe.tune.best_run_id": best["mlflow_run_id"] or ""})
    if summary["registered_version"]:
        tags["vitpipe.tune.registered_version"] = str(summary["registered_version"])
    for key, value in tags.items():
        retry(lambda: client.set_tag(parent, key, value), attempts=3, what="set search tag")
    retry(lambda: client.log_dict(parent, summary, "tune/summary.json"), attempts=3, what="log summary")
    status = "FINISHED" if best is not None else "FAILED"
    retry(lambda: client.set_terminated(parent, status=status), attempts=3, what="end search run")
