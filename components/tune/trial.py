"""One trial of a search: the training pipeline's own run, with its reports forwarded to Tune.

A trial is a Tune function trainable that calls :func:`components.training.trainer.run_training`
(which builds and fits one ``TorchTrainer``) on the base config with the trial's sampled
values (drawn by the search driver and kept in its trial record; Tune only hands the trial
its id). Its MLflow run nests under the search's run (``mlflow.parentRunId``), its checkpoints
live in ``<storage>/<search>/trials/<search>-<trial id>``, so a trial started again after the
search driver died resumes from its last checkpoint into the same MLflow run (Ray Train and
the run record do that, as for any resubmitted training run).

Reports reach Tune through :class:`ReportToTune` (Ray Train V2's ``TuneReportCallback``,
forwarding only the reports that carry the searched metric: ASHA compares trials at those).
When the run ends, the trial reports once more: the metric of its best checkpoint, the final
evaluation (``eval_*``), the checkpoint's path and its MLflow run id.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from ray.tune.integration.ray_train import TuneReportCallback

from components.core.checkpoint import META_FILE
from components.training import storage
from components.training.reporting import worst_score

DONE_KEY = "vitpipe_done"  # 1.0 in the last result of a trial that trained to its end
CHECKPOINT_KEY = "vitpipe_checkpoint"
RUN_ID_KEY = "vitpipe_mlflow_run_id"
TRIAL_KEY = "vitpipe_trial"  # the one key of a trial's Tune config: its id in the trial record
TRIAL_TAG = "vitpipe.tune.trial_id"
SEARCH_TAG = "vitpipe.tune.search"
PARENT_TAG = "mlflow.parentRunId"


class ReportToTune(TuneReportCallback):
    """Forward a training report to Tune when it carries a real value of ``metric``.

    Reports without it (progress lines) and checkpoints before the first validation (whose
    score is the placeholder :func:`worst_score`) are not forwarded: Tune requires the
    scheduler's metric in every result, and a placeholder would rank a trial at a rung.
    Nor is the report of the run's last step: the trial reports it itself once the run has
    been evaluated, so a rung (or ``max_t``) at the last step cannot stop a trial that
    finished training while its final evaluation runs.
    """

    def __init__(self, metric: str) -> None:
        super().__init__()
        self.metric = metric

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        first = metrics[0] if metrics else {}
        value = first.get(self.metric)
        if value is None or float(value) in (worst_score("max"), worst_score("min")):
            return
        plan = (run_context.train_loop_config or {}).get("plan") or {}
        if first.get("step", 0) >= plan.get("total_steps", float("inf")):
            return
        numeric = {k: float(v) for k, v in first.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        super().after_report(run_context, [numeric], checkpoint)


def checkpoint_metric(checkpoint: str, metric: str) -> float | None:
    """``metric`` as the checkpoint's ``vitpipe.json`` holds it (local path or URI)."""
    text = storage.read_text(storage.join(checkpoint, META_FILE))
    value = (json.loads(text).get("metrics") or {}).get(metric) if text else None
    return None if value is None else float(value)


def make_trainable(base: dict[str, Any], trials: dict[str, dict[str, Any]], *, search_name: str, metric: str,
                   trials_storage: str, parent_run_id: str | None) -> Callable[[dict[str, Any]], None]:
    """The Tune function trainable of a search (``base``: the base TrainConfig as JSON;
    ``trials``: each trial's sampled values by trial id, the search's record's). Tune hands
    each trial its id as ``config[TRIAL_KEY]``."""

    def trial(config: dict[str, Any]) -> None:
        import ray.tune

        from components.training.config import TrainConfig
        from components.training.trainer import run_training
        from components.tune.config import trial_config

        trial_id = config[TRIAL_KEY]
        sampled = trials[trial_id]
        cfg = trial_config(TrainConfig.model_validate(base), sampled, run_name=f"{search_name}-{trial_id}",
                           storage_path=trials_storage)
        tags = {TRIAL_TAG: trial_id, SEARCH_TAG: search_name,
                "vitpipe.tune.sampled": json.dumps(sampled, sort_keys=True)}
        if parent_run_id:
            tags[PARENT_TAG] = parent_run_id
        summary = run_training(cfg, callbacks=[ReportToTune(metric)], mlflow_tags=tags)
        final = {f"eval_{k}": float(v) for k, v in summary["metrics"].items()}
        value = checkpoint_metric(summary["checkpoint"], metric)
        if value is not None:
            final[metric] = value
        ray.tune.report({**final, "step": float(summary["steps"]), DONE_KEY: 1.0,
                         CHECKPOINT_KEY: summary["checkpoint"], RUN_ID_KEY: summary["mlflow_run_id"] or ""})

    trial.__name__ = f"vitpipe_trial_{search_name}"
    return trial
