"""Typed training config: one :class:`TrainConfig` for every task and pipeline.

Validated by pydantic before Ray starts a single worker, so an unknown key or a wrong type
is one clear :class:`components.core.config.ConfigError`. The data section is the data
layer's own :class:`components.data.config.DataConfig`, validated with the rest.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from components.core.config import ConfigError, StrictModel
from components.core.names import TaskName
from components.data.config import DataConfig

Precision = Literal["auto", "bf16", "fp16", "fp32"]


class ModelSection(StrictModel):
    """Which model to build: ``build_model(name, num_classes=..., img_size=..., head=..., **overrides)``."""

    name: str = "vit_demo"
    head: Literal["mlp", "linear"] = "mlp"
    overrides: dict[str, Any] = Field(default_factory=dict)
    # Fine-tuning / detection init: a checkpoint directory (local path), a models:/ URI, or
    # weights by name from the hub cache: timm:<model>[.<tag>], hf:<org>/<name>[@<revision>].
    init_from: str | None = None


class ScalingSection(StrictModel):
    """Ray Train's ``ScalingConfig``: 1 CPU worker here, N GPU workers on a cluster.

    ``num_workers`` is a fixed count, or ``[min, max]`` for elastic training: Ray Train
    starts with as many workers as the cluster holds (at least ``min``), and restarts the
    worker group from the latest checkpoint at a new size when nodes join or leave. The
    global batch stays ``batch_size × optim.grad_accum_steps × max`` at every size (fewer
    workers accumulate more micro-batches per optimizer step).
    """

    num_workers: int | tuple[int, int] = 1
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    # torch intra-op threads per worker (0 = leave torch's default).
    torch_threads: int = Field(0, ge=0)
    # Elastic only: how often (s) a healthy worker group checks whether the cluster now
    # holds a different number of workers (Ray's elastic_resize_monitor_interval_s).
    resize_interval_s: float = Field(60.0, ge=0)

    @field_validator("num_workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> int | tuple[int, int]:
        def count(v: Any) -> int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"num_workers must be an int or [min, max] of ints, got {value!r}")
            return v

        if isinstance(value, (list, tuple)):
            if len(value) != 2:
                raise ValueError(f"num_workers as a range is [min, max], got {list(value)!r}")
            low, high = count(value[0]), count(value[1])
            if not 1 <= low <= high:
                raise ValueError(f"num_workers [min, max] needs 1 <= min <= max, got [{low}, {high}]")
            return (low, high)
        if count(value) < 1:
            raise ValueError(f"num_workers must be >= 1, got {value}")
        return value

    @property
    def elastic(self) -> bool:
        return isinstance(self.num_workers, tuple)

    @property
    def min_workers(self) -> int:
        return self.num_workers[0] if self.elastic else self.num_workers

    @property
    def max_workers(self) -> int:
        return self.num_workers[1] if self.elastic else self.num_workers


def micro_batches_per_step(scaling: ScalingSection, grad_accum_steps: int, world_size: int) -> int:
    """Micro-batches each of ``world_size`` workers accumulates per optimizer step, so that
    one step always covers ``grad_accum_steps × max_workers`` micro-batches in all (the
    global batch does not change when an elastic run is resized)."""
    total = grad_accum_steps * scaling.max_workers
    if world_size < 1 or total % world_size:
        raise ValueError(f"{world_size} workers cannot share {total} micro-batches per step evenly")
    return total // world_size


class OptimSection(StrictModel):
    """AdamW + linear warmup + cosine decay, layer-wise lr decay for fine-tuning."""

    lr: float = Field(1e-3, gt=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    # With a time budget (run.max_seconds): the cosine also follows the seconds spent, and
    # reaches min_lr_ratio when the budget or max_steps runs out, whichever comes first.
    # False: the schedule counts steps only, and a budget that ends early cuts it short.
    anneal_to_budget: bool = True
    layer_decay: float = Field(1.0, gt=0, le=1)  # 1.0 = off; 0.65-0.75 for fine-tuning
    grad_accum_steps: int = Field(1, ge=1)
    clip_grad_norm: float = Field(1.0, ge=0)  # 0 = off
    label_smoothing: float = Field(0.0, ge=0, lt=1)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError("betas must lie in [0, 1)")
        return value


class CheckpointSection(StrictModel):
    """How often to checkpoint and which checkpoints Ray Train keeps."""

    every_n_steps: int = Field(0, ge=0)  # 0 = only at epoch ends
    keep_best_k: int = Field(2, ge=1)
    metric: str = "val_top1"
    mode: Literal["max", "min"] = "max"


class RunSection(StrictModel):
    """Run identity and storage. The same ``name`` resubmitted resumes the run."""

    name: str = "vitpipe-run"
    storage_path: str = "~/vitpipe_runs"
    max_failures: int = Field(2, ge=-1)
    seed: int = 0
    log_every_n_steps: int = Field(10, ge=1)  # MLflow per-step metrics (rank 0, direct)
    # Driver progress lines (ray.train.report without a checkpoint) at most this often. Ray
    # Train V2 holds one unconsumed report per worker and its controller takes it once per
    # poll (poll_interval_s): reporting more often blocks the loop.
    progress_every_s: float = Field(3.0, ge=0)
    # How often Ray Train's controller polls the workers (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S,
    # Ray's default 2 s). A checkpoint report waits for the next poll, and so does the end of
    # the run: 0.5 s saves seconds per run and per checkpoint, for one small call per worker.
    poll_interval_s: float = Field(0.5, gt=0, le=60)
    # A training time budget: stop at the first optimizer-step boundary after this many
    # seconds of fitting, then finish as usual (validation, final checkpoint, evaluation,
    # registration). The clock starts when the first step starts (dataset and worker
    # start-up are not counted) and pauses while validating and writing checkpoints; a
    # resumed run goes on from the seconds its checkpoint recorded. None: no budget.
    max_seconds: float | None = Field(None, gt=0)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not value or any(c in value for c in "/\\ ") or value.startswith("."):
            raise ValueError("run.name must be a non-empty name without '/', '\\' or spaces")
        return value


class MlflowSection(StrictModel):
    """Tracking server; ``tracking_uri`` defaults to ``MLFLOW_TRACKING_URI``."""

    tracking_uri: str | None = None
    experiment: str = "vitpipe"
    enabled: bool = True
    # Metrics are sent by a background thread: a failed send is retried with a delay doubling
    # from 0.5 s up to 0.5 * 2**max_retries s, for as long as the server is away.
    max_retries: int = Field(5, ge=0)
    buffer_steps: int = Field(10000, ge=1)  # logged steps held while the server is away
    drain_timeout_s: float = Field(300.0, ge=0)  # the end of training waits this long to send the rest

    def resolved_uri(self) -> str | None:
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None


class RegisterSection(StrictModel):
    """Registration at the end of a run (``components.tracking.registry``)."""

    enabled: bool = True
    registered_name: str | None = None  # None: the default name for the task


class EvalSection(StrictModel):
    every_n_epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    score_threshold: float = Field(0.0, ge=0, le=1)


class CriterionSection(StrictModel):
    """The detectors' set criterion (``components.models.criterion.build_criterion``): matcher
    costs and loss weights (the same numbers), no-object weight, one-to-many matching."""

    class_weight: float = Field(1.0, ge=0)
    bbox_weight: float = Field(5.0, ge=0)
    giou_weight: float = Field(2.0, ge=0)
    eos_coef: float = Field(0.1, gt=0, le=1)  # cross-entropy weight of the no-object class
    # k > 1: each box is matched to k queries (set the model's nms_iou to drop the duplicates)
    match_repeats: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _some_cost(self) -> "CriterionSection":
        if self.class_weight == self.bbox_weight == self.giou_weight == 0:
            raise ValueError("criterion: class_weight, bbox_weight and giou_weight are all 0")
        return self


class MaeSection(StrictModel):
    """Masked-autoencoder pretraining (``task: mae``, He et al. 2021); see ``components.models.mae``."""

    mask_ratio: float = Field(0.75, gt=0, lt=1)  # share of patches hidden from the encoder
    decoder_dim: int = Field(64, ge=8)
    decoder_depth: int = Field(2, ge=1)
    decoder_heads: int = Field(4, ge=1)
    decoder_mlp_ratio: float = Field(4.0, gt=0)
    norm_pix_loss: bool = True  # per-patch normalised pixel targets (the paper's default)

    @model_validator(mode="after")
    def _heads_divide(self) -> "MaeSection":
        if self.decoder_dim % self.decoder_heads:
            raise ValueError(f"mae.decoder_dim ({self.decoder_dim}) must be a multiple of "
                             f"mae.decoder_heads ({self.decoder_heads})")
        return self


class TrainConfig(StrictModel):
    """Everything one pipeline run needs. ``task`` picks the loss and the evaluator.

    ``registry`` (not ``register``: that name shadows pydantic's ``BaseModel.register``)
    says whether and under which name the final checkpoint is registered.
    """

    # mae: self-supervised masked-autoencoder pretraining of a ViT encoder (labels unused).
    task: TaskName = "classification"
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataConfig  # required: where the data is and what the model sees
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    batch_size: int = Field(16, ge=1)  # per worker, per micro-step
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)  # optimizer steps; caps the epochs
    precision: Precision = "auto"
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    run: RunSection = Field(default_factory=RunSection)
    mlflow: MlflowSection = Field(default_factory=MlflowSection)
    registry: RegisterSection = Field(default_factory=RegisterSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    mae: MaeSection = Field(default_factory=MaeSection)
    criterion: CriterionSection = Field(default_factory=CriterionSection)  # task: detection

    @model_validator(mode="after")
    def _elastic_batch(self) -> "TrainConfig":
        """Every worker count of an elastic range must split the global batch evenly."""
        scaling, accum = self.scaling, self.optim.grad_accum_steps
        bad = [w for w in range(scaling.min_workers, scaling.max_workers + 1)
               if (accum * scaling.max_workers) % w]
        if bad:
            fit = next(a for a in range(accum, accum * math.lcm(*bad) + 1, accum)
                       if all((a * scaling.max_workers) % w == 0 for w in bad))
            raise ValueError(
                f"scaling.num_workers {list(scaling.num_workers)}: the global batch is "
                f"grad_accum_steps × max = {accum * scaling.max_workers} micro-batches per step, "
                f"which {', '.join(map(str, bad))} worker(s) cannot share evenly; set "
                f"optim.grad_accum_steps={fit} or narrow the range")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        """The task's own rules, and the in-loop metric that ranks its checkpoints (MAE and
        detectors validate on the val loss: lower is better)."""
        from components.tasks import get_task

        task = get_task(self.task)
        task.check_config(self)
        metric, mode = task.checkpoint_ranking(self.checkpoint.metric, self.checkpoint.mode)
        object.__setattr__(self.checkpoint, "metric", metric)
        object.__setattr__(self.checkpoint, "mode", mode)
        return self


def check_model(cfg: TrainConfig) -> None:
    """The model name is registered and fits the task (MAE: a ViT-family encoder), and every
    ``model.overrides`` key is one its builder accepts (the task's check)."""
    from components.tasks import get_task

    get_task(cfg.task).check_model(cfg)


def load_train_config(path, overrides: list[str] = (), *,
                      check: Callable[[TrainConfig], None] | None = None) -> TrainConfig:
    """Read, override and validate a training config, the data section and the model name
    included; ``check`` (a pipeline's own rule, e.g. its task) runs before the model check."""
    from components.core.config import load_config

    cfg = load_config(TrainConfig, path, overrides)
    if check is not None:
        check(cfg)
    check_model(cfg)  # here, not in a worker: an unknown name would fail every restart
    return cfg
