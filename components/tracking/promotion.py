"""Promotion by evidence: re-measure the candidate and the champion, move ``@champion`` or not.

:func:`promote` (used by ``python -m pipelines.promote`` and ``vitpipe registry promote``):

1. resolve the candidate version (default: the newest) and the current ``@champion``;
2. fetch both checkpoints, check they are of the config's task and that their class names
   match the validation data's;
3. evaluate both **in this run** with the task's evaluation (``components.tasks``, through
   the shared evaluator :mod:`components.evaluation`) on the same validation split, each
   through its own eval transform (its ``image_size``/``patch_size``);
4. decide: the candidate takes ``@champion`` when ``candidate > champion + margin`` on the
   task's metric (``top1`` / ``map`` unless configured), otherwise it gets ``@challenger``;
   with no champion yet the candidate is promoted (``first``);
5. record: both scores and the decision as tags on the candidate version, a
   ``comparison.json`` artifact and metrics on a promotion run (experiment
   ``vitpipe-promotion``), and an event in the promotion history
   (:mod:`components.tracking.history`).

Every check happens before any alias moves: a bad request leaves the registry as it was.
:func:`set_alias` is the manual override / rollback (recorded as ``manual``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from components.core.config import StrictModel
from components.core.names import ModelTask
from components.data.config import DataConfig, with_boxes
from components.tracking import history
from components.tracking.registry import (
    CHALLENGER,
    CHAMPION,
    RegistryError,
    client,
    default_name,
    fetch_checkpoint,
    fluent_uris,
    get_version,
)

log = logging.getLogger(__name__)

class PromoteConfig(StrictModel):
    """``pipelines/configs/promote.yaml``; every field can be overridden as ``key=value``."""

    task: ModelTask = "classification"
    model: str | None = None  # registered name; default vitpipe-classifier / vitpipe-detector
    candidate: str | None = None  # version to judge; default: the newest version
    metric: str | None = None  # default: top1 (classification) / map (detection)
    margin: float = Field(0.0, ge=0)  # candidate must beat the champion by more than this
    data: DataConfig  # the validation data (image/patch size are taken from each model)
    split: str = "val"
    batch_size: int = Field(32, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "fp32"  # fp32: exact, comparable
    score_threshold: float = Field(0.0, ge=0, le=1)  # detection: keep boxes above this score
    tracking_uri: str | None = None  # default: MLFLOW_TRACKING_URI
    cache_dir: str = "~/.cache/vitpipe/models"
    experiment: str = "vitpipe-promotion"

    @field_validator("candidate", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        """``candidate=3`` on the command line parses as a number; registry versions are text."""
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _data_fits_task(self) -> "PromoteConfig":
        from components.data.dataset import task_of

        if task_of(self.data) != self.task:
            raise ValueError(
                f"task is {self.task} but data.format {self.data.format!r} gives "
                f"{task_of(self.data)} data"
            )
        return self

    @property
    def registered_name(self) -> str:
        return self.model or default_name(self.task)


@dataclass
class PromotionResult:
    """What :func:`promote` decided and measured (``comparison.json`` holds the same)."""

    model: str
    candidate: str
    champion: str | None
    metric: str
    margin: float
    candidate_score: float
    champion_score: float | None
    decision: Literal["promoted", "first", "refused", "already-champion"]
    alias_set: str | None
    run_id: str | None
    candidate_metrics: dict[str, Any] = field(default_factory=dict)
    champion_metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- helpers
def _alias_version(mlf, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    from components.tracking.registry import is_not_found, server_error

    try:
        return str(mlf.get_model_version_by_alias(name, alias).version)
    except MlflowException as err:
        if is_not_found(err):
            return None
        raise server_error(err, f"resolving {name}@{alias}") from None


def newest_version(mlf, name: str, *, tracking_uri: str | None = None) -> str:
    from components.tracking.registry import get_registered_model

    get_registered_model(name, tracking_uri=tracking_uri)
    versions = mlf.search_model_versions(f"name = '{name}'")
    if not versions:
        raise RegistryError(f"registered model {name!r} has no versions")
    return str(max(int(v.version) for v in versions))


def _checked_checkpoint(
    name: str, version: str, task: str, *, cache_dir: Path, tracking_uri: str | None
) -> Path:
    """Fetch ``version``'s checkpoint and make sure it is a ``task`` model."""
    from components.core.checkpoint import read_meta

    mv = get_version(name, version, tracking_uri=tracking_uri)
    tagged = mv.tags.get("task")
    if tagged and tagged != task:
        raise RegistryError(f"{name} version {version} is a {tagged} model, not {task}")
    path = fetch_checkpoint(name, version, cache_dir=cache_dir, tracking_uri=tracking_uri)
    meta = read_meta(path)
    if meta.task != task:
        raise RegistryError(f"{name} version {version} is a {meta.task} model, not {task}")
    return path


def _eval_batches(data_cfg: DataConfig, split: str, task: str, batch_size: int):
    """The validation bundle and a factory of batch iterators over it (eval transform)."""
    import ray.data

    from components.data.dataset import build_dataset
    from components.data.loader import iter_batches

    # Ray Data would log a progress block every 10 s per measurement into the job's log
    ray.data.DataContext.get_current().enable_progress_bars = False
    bundle = build_dataset(data_cfg, split, training=False)

    def batches():
        return iter_batches(bundle.dataset, batch_size=batch_size, task=task, device="cpu")

    return bundle, batches


def coco_ground_truth(bundle) -> Any:
    """The accepted COCO ground truth of a detection bundle (path, dict or COCO object);
    ``None`` for a split without boxes (the detection task refuses to score without it)."""
    for attr in ("coco_gt", "coco_gt_path"):
        try:
            value = getattr(bundle, attr, None)
        except ValueError:  # a bundle without boxes has no COCO file to write
            return None
        if value is not None:
            return value() if callable(value) else value
    return None


def measure(
    checkpoint_dir: Path, cfg: PromoteConfig, *, data_cache: dict | None = None
) -> dict[str, Any]:
    """Evaluate one checkpoint on ``cfg``'s validation split with the shared evaluator."""
    from components.core.device import autocast_dtype, pick_device
    from components.models import model_from_checkpoint
    from components.tasks import get_task

    task = get_task(cfg.task)
    device = pick_device(prefer_gpu=cfg.device != "cpu")
    model, meta = model_from_checkpoint(checkpoint_dir, device=device)
    # a detector trained letterboxed is measured on letterboxed images (its own eval transform)
    letterbox = with_boxes(meta.task) and bool(meta.extra.get("letterbox"))
    data_cfg = cfg.data.model_copy(
        update={"image_size": meta.image_size, "patch_size": meta.patch_size,
                "letterbox": letterbox, "multiscale": None}
    )
    key = (meta.image_size, meta.patch_size, letterbox)
    cache = data_cache if data_cache is not None else {}
    if key not in cache:
        cache[key] = _eval_batches(data_cfg, cfg.split, task.batch_kind, cfg.batch_size)
    bundle, batches = cache[key]
    if list(bundle.class_names) != list(meta.class_names):
        raise RegistryError(
            f"{checkpoint_dir}: the model's classes {meta.class_names} differ from the "
            f"validation data's {list(bundle.class_names)}: the scores would not be comparable"
        )
    dtype = autocast_dtype(device, cfg.precision, model)
    return task.evaluate(model, batches(), device=device, amp_dtype=dtype, class_names=meta.class_names,
                         coco_gt=coco_ground_truth(bundle), score_threshold=cfg.score_threshold)


def _score(metrics: dict[str, Any], metric: str) -> float:
    if metric not in metrics or not isinstance(metrics[metric], (int, float)):
        raise RegistryError(
            f"metric {metric!r} is not measured; choose one of "
            f"{sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))}"
        )
    return float(metrics[metric])


def _tracking_uri(cfg_uri: str | None) -> str | None:
    return cfg_uri or os.environ.get("MLFLOW_TRACKING_URI") or None


# ---------------------------------------------------------------------------- promote
def promote(cfg: PromoteConfig) -> PromotionResult:
    """Judge a candidate against the champion on fresh measurements; move aliases."""
    tracking_uri = _tracking_uri(cfg.tracking_uri)
    with fluent_uris(tracking_uri):  # MLflow's process-wide URIs, put back afterwards
        return _promote(cfg, tracking_uri)


def _promote(cfg: PromoteConfig, tracking_uri: str | None) -> PromotionResult:
    import mlflow

    from components.tasks import get_task

    mlf = client(tracking_uri)
    name = cfg.registered_name
    metric = cfg.metric or get_task(cfg.task).metric
    cache_dir = Path(cfg.cache_dir).expanduser()

    if cfg.candidate:
        candidate = str(get_version(name, cfg.candidate, tracking_uri=tracking_uri).version)
    else:
        candidate = newest_version(mlf, name, tracking_uri=tracking_uri)
    champion = _alias_version(mlf, name, CHAMPION)
    cand_dir = _checked_checkpoint(
        name, candidate, cfg.task, cache_dir=cache_dir, tracking_uri=tracking_uri
    )
    if champion == candidate:
        log.info("%s version %s already holds @%s: nothing to do", name, candidate, CHAMPION)
        return PromotionResult(name, candidate, champion, metric, cfg.margin, float("nan"),
                               None, "already-champion", None, None)
    champ_dir = (
        _checked_checkpoint(name, champion, cfg.task, cache_dir=cache_dir,
                            tracking_uri=tracking_uri)
        if champion else None
    )

    experiment = mlflow.set_experiment(cfg.experiment)
    with mlflow.start_run(experiment_id=experiment.experiment_id,
                          run_name=f"promote-{name}-v{candidate}",
                          nested=mlflow.active_run() is not None) as run:
        mlflow.set_tags({"registered_model": name, "candidate": candidate,
                         "champion": champion or "none", "task": cfg.task})
        mlflow.log_params({"metric": metric, "margin": cfg.margin, "split": cfg.split,
                           "precision": cfg.precision})
        data_cache: dict = {}
        cand_metrics = measure(cand_dir, cfg, data_cache=data_cache)
        cand_score = _score(cand_metrics, metric)
        champ_metrics = measure(champ_dir, cfg, data_cache=data_cache) if champ_dir else {}
        champ_score = _score(champ_metrics, metric) if champ_dir else None

        if champion is None:
            decision, alias, reason = "first", CHAMPION, "first version: no champion yet"
        elif cand_score > champ_score + cfg.margin:
            decision, alias = "promoted", CHAMPION
            reason = (f"{metric} {cand_score:.4f} > champion v{champion} "
                      f"{champ_score:.4f} + margin {cfg.margin:g}")
        else:
            decision, alias = "refused", CHALLENGER
            reason = (f"{metric} {cand_score:.4f} <= champion v{champion} "
                      f"{champ_score:.4f} + margin {cfg.margin:g}")
        result = PromotionResult(
            name, candidate, champion, metric, cfg.margin, cand_score, champ_score, decision,
            alias, run.info.run_id, cand_metrics, champ_metrics,
        )
        mlflow.log_metrics({"candidate_score": cand_score,
                            **({"champion_score": champ_score} if champ_score is not None else {})})
        mlflow.log_dict(result.to_dict(), "comparison.json")
        mlflow.set_tag("decision", decision)

        # Everything is measured: now, and only now, the registry changes.
        if _alias_version(mlf, name, CHAMPION) != champion:
            raise RegistryError(
                f"{name}@{CHAMPION} moved while this promotion measured it: run it again"
            )
        previous = _alias_version(mlf, name, alias)
        mlf.set_registered_model_alias(name, alias, candidate)
        if alias == CHAMPION and _alias_version(mlf, name, CHALLENGER) == candidate:
            mlf.delete_registered_model_alias(name, CHALLENGER)
        version_tags = {
            "promotion.decision": decision, "promotion.metric": metric,
            "promotion.candidate_score": f"{cand_score:.6g}",
            "promotion.champion_version": champion or "none",
            "promotion.champion_score": "none" if champ_score is None else f"{champ_score:.6g}",
            "promotion.margin": f"{cfg.margin:g}", "promotion.run_id": run.info.run_id,
        }
        for key, value in version_tags.items():
            mlf.set_model_version_tag(name, candidate, key, value)
        history.record_event(
            mlf, name, action=decision, alias=alias, version=candidate, previous=previous,
            reason=reason, metric=metric, candidate_score=cand_score,
            champion_score=champ_score, run_id=run.info.run_id,
        )
    log.info("%s v%s: %s (%s)", name, candidate, decision, reason)
    return result


def set_alias(
    name: str, version: str, alias: str = CHAMPION, *, reason: str = "manual override",
    tracking_uri: str | None = None, cache_dir: str | Path = "~/.cache/vitpipe/models",
) -> dict[str, Any]:
    """Manual override / rollback: point ``alias`` at ``version`` (checked), record it."""
    tracking_uri = _tracking_uri(tracking_uri)
    mlf = client(tracking_uri)
    mv = get_version(name, version, tracking_uri=tracking_uri)
    model_task = mlf.get_registered_model(name).tags.get("task")
    task = mv.tags.get("task") or model_task
    if task is None:
        raise RegistryError(f"{name} version {version} carries no task tag: not a vitpipe model")
    if model_task and task != model_task:
        raise RegistryError(f"{name} holds {model_task} models; version {version} is {task}")
    # The artifacts must be there before the alias can point at them.
    _checked_checkpoint(name, str(version), task, cache_dir=Path(cache_dir).expanduser(),
                        tracking_uri=tracking_uri)
    previous = _alias_version(mlf, name, alias)
    mlf.set_registered_model_alias(name, alias, str(version))
    mlf.set_model_version_tag(name, str(version), f"promotion.manual.{alias}", reason)
    return history.record_event(
        mlf, name, action="manual", alias=alias, version=str(version), previous=previous,
        reason=reason,
    )


def write_comparison(result: PromotionResult, path: str | Path) -> Path:
    """The comparison JSON on local disk too (the pipeline prints where)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return path

