"""The typed config of a hyperparameter search: a training config plus a ``search`` section.

A tune YAML is a :class:`components.training.config.TrainConfig` (the base every trial starts
from, same schema and loader as the training pipelines) with one more section, ``search``:
a search space over dotted config keys, the number of trials, the metric, the ASHA scheduler
and the trial concurrency. :func:`load_tune_config` validates all of it before Ray starts
anything, each search domain included: its choices (or its bounds) are applied to the base
config and validated as the trial's config would be, so an unknown key or a value the
training config rejects is one :class:`ConfigError`.
"""

from __future__ import annotations

import math
import random
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from components.core.config import ConfigError, StrictModel, load_config, set_dotted
from components.training.config import TrainConfig, check_model

DOMAIN_KINDS = ("choice", "uniform", "loguniform", "randint")
# Set per trial (or by the search itself): never part of a search space.
FIXED_PREFIXES = ("task", "run.name", "run.storage_path", "mlflow.", "registry.")


def default_objective(task: str) -> tuple[str, str]:
    """``(metric, mode)`` a search of ``task`` ranks trials by unless ``search.metric`` says:
    the task's in-loop validation metric, reported at every validation, and its direction."""
    from components.tasks import get_task

    t = get_task(task)
    return t.val_metric, t.val_direction


def reported_metrics(task: str) -> set[str]:
    """The validation metrics the training loop reports for ``task`` (what a search may rank by)."""
    return {"val_loss", default_objective(task)[0]}


class Domain(StrictModel):
    """One search dimension: exactly one of ``choice``, ``uniform``, ``loguniform``, ``randint``.

    ``uniform`` / ``loguniform``: ``[low, high]`` floats; ``randint``: ``[low, high]`` integers,
    both ends included; ``choice``: a non-empty list of values.
    """

    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "Domain":
        given = [k for k in DOMAIN_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(DOMAIN_KINDS)} (got {given or 'none'})")
        if self.choice is not None and not self.choice:
            raise ValueError("choice needs at least one value")
        for kind in ("uniform", "loguniform"):
            bounds = getattr(self, kind)
            if bounds is not None:
                low, high = bounds
                if not (math.isfinite(low) and math.isfinite(high) and low < high):
                    raise ValueError(f"{kind} needs finite [low, high] with low < high, got {list(bounds)}")
                if kind == "loguniform" and low <= 0:
                    raise ValueError(f"loguniform needs low > 0, got {low}")
        if self.randint is not None and self.randint[0] > self.randint[1]:
            raise ValueError(f"randint needs low <= high, got {list(self.randint)}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in DOMAIN_KINDS if getattr(self, k) is not None)

    def candidates(self) -> list[Any]:
        """The values to validate against the base config: every choice, or both bounds."""
        return list(self.choice) if self.kind == "choice" else list(getattr(self, self.kind))

    def describe(self) -> str:
        return f"{self.kind}({', '.join(repr(v) for v in getattr(self, self.kind))})"

    def sample(self, rng: random.Random) -> Any:
        """One value drawn from this domain with ``rng``."""
        if self.kind == "choice":
            return rng.choice(list(self.choice))
        if self.kind == "uniform":
            return rng.uniform(*self.uniform)
        if self.kind == "loguniform":
            low, high = self.loguniform
            return math.exp(rng.uniform(math.log(low), math.log(high)))
        return rng.randint(*self.randint)  # both ends included


class AshaSection(StrictModel):
    """Ray Tune's ``ASHAScheduler``, in optimizer steps (the ``step`` every report carries).

    Rung decisions happen at the reports that carry the metric, i.e. at each validation
    (every ``eval.every_n_epochs`` epochs): set ``grace_period`` to at least one epoch's steps.
    """

    enabled: bool = True
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)
    # ASHA stops every trial at max_t: at least the run's steps. None: max_steps, else unbounded.
    max_t: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _grace_below_max(self) -> "AshaSection":
        if self.max_t is not None and self.grace_period > self.max_t:
            raise ValueError(f"grace_period ({self.grace_period}) exceeds max_t ({self.max_t})")
        return self


def _flatten_space(raw: Any, prefix: str = "") -> dict[str, Any]:
    """``{optim: {lr: {loguniform: [..]}}}`` (as ``key.sub=value`` overrides nest it) →
    ``{"optim.lr": {loguniform: [..]}}``; a mapping keyed by a domain kind is a leaf."""
    if not isinstance(raw, dict):
        raise ValueError(f"search.space{'.' + prefix if prefix else ''} must be a mapping")
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value and not set(value) & set(DOMAIN_KINDS):
            flat.update(_flatten_space(value, name))
        else:
            flat[name] = value
    return flat


class SearchSection(StrictModel):
    """What to search and how; see docs/tune.md for every key."""

    space: dict[str, Domain]
    num_samples: int = Field(4, ge=1)
    metric: str | None = None  # None: the task's (default_objective)
    mode: Literal["max", "min"] | None = None
    scheduler: AshaSection = Field(default_factory=AshaSection)
    max_concurrent_trials: int | None = Field(None, ge=1)  # None: what the cluster's CPUs/GPUs fit
    data_cpus: float = Field(1.0, ge=0)  # CPUs each trial leaves free for its Ray Data tasks
    driver_cpus: float = Field(0.1, gt=0)  # the trial's own process (builds datasets, runs fit)
    seed: int | None = 0  # the sampler's seed (None: a different search every time)
    resume_errored: bool = False  # on resume, rerun trials that ended with an error

    @field_validator("space", mode="before")
    @classmethod
    def _flat(cls, value: Any) -> Any:
        return _flatten_space(value)

    @field_validator("space")
    @classmethod
    def _not_empty(cls, value: dict[str, Domain]) -> dict[str, Domain]:
        if not value:
            raise ValueError("search.space needs at least one key")
        return value


class TuneConfig(TrainConfig):
    """A training config (the base of every trial) plus its ``search`` section."""

    search: SearchSection

    def base(self) -> TrainConfig:
        """The training config every trial starts from."""
        return TrainConfig.model_validate(self.model_dump(mode="json", exclude={"search"}))

    @model_validator(mode="after")
    def _max_t_covers_the_run(self) -> "TuneConfig":
        max_t = self.search.scheduler.max_t
        if self.search.scheduler.enabled and max_t is not None and self.max_steps and max_t < self.max_steps:
            raise ValueError(f"search.scheduler.max_t ({max_t}) is below max_steps ({self.max_steps}): "
                             "ASHA would stop every trial at max_t")
        return self

    def objective(self) -> tuple[str, str]:
        metric, mode = default_objective(self.task)
        if self.search.metric is not None and self.search.metric != metric and self.search.mode is None:
            mode = "min" if self.search.metric.endswith("loss") else "max"
        return self.search.metric or metric, self.search.mode or mode


# ----------------------------------------------------------------------------- trials
def set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted ``key`` in the nested dict ``raw`` (in place)."""
    set_dotted(raw, key.split("."), value, what=f"search.space.{key}")


def trial_config(base: TrainConfig, sampled: dict[str, Any], *, run_name: str, storage_path: str,
                 parent_experiment: str | None = None) -> TrainConfig:
    """The training config of one trial: ``base`` with the sampled values, its own run name
    and storage path, and no registration (the search registers its best trial)."""
    raw = base.model_dump(mode="json")
    for key, value in sampled.items():
        set_key(raw, key, value)
    raw["run"].update(name=run_name, storage_path=storage_path)
    raw["registry"]["enabled"] = False
    if parent_experiment:
        raw["mlflow"]["experiment"] = parent_experiment
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_first_error(err)) from None


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    return f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"


# ------------------------------------------------------------------------- validation
def validate_space(cfg: TuneConfig) -> None:
    """Apply every choice (or both bounds) of every domain to the base config and validate it
    as a trial's config; the first problem is one :class:`ConfigError` naming key and value."""
    base = cfg.base()
    metric, _ = cfg.objective()
    if metric not in reported_metrics(cfg.task):
        raise ConfigError(f"search.metric: {metric!r} is not reported by {cfg.task} training; "
                          f"use one of {sorted(reported_metrics(cfg.task))}")
    for key, domain in cfg.search.space.items():
        if key.startswith(FIXED_PREFIXES):
            raise ConfigError(f"search.space.{key}: task, run.name, run.storage_path, mlflow.* and "
                              "registry.* are set by the search, not searched over")
        for value in domain.candidates():
            where = f"search.space.{key} = {value!r} ({domain.describe()})"
            try:
                trial = trial_config(base, {key: value}, run_name="validate", storage_path="validate")
                if key.startswith("model."):
                    check_model(trial)
                    _check_builds(trial)
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}") from None


def _check_builds(cfg: TrainConfig) -> None:
    """The trial's model (name, head, overrides) builds, on the meta device: no memory, no weights."""
    import torch

    from components.tasks import get_task

    try:
        with torch.device("meta"):
            get_task(cfg.task).build_model(cfg, num_classes=2, image_size=cfg.data.image_size)
    except (TypeError, ValueError, KeyError, AssertionError) as err:
        raise ConfigError(f"model {cfg.model.name!r} does not build: {err}") from None


def load_tune_config(path, overrides: list[str] = ()) -> TuneConfig:
    """Read, override and validate a tune config: the base training config (data section and
    model name included) and the search space against it."""
    cfg = load_config(TuneConfig, path, overrides)
    check_model(cfg)
    validate_space(cfg)
    return cfg
