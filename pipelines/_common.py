"""What every training pipeline entrypoint shares: a stage function returning a typed
:class:`TrainResult`, and the thin ``main`` around it (argv → validated config → run → summary).

``python -m pipelines.<name> --config pipelines/configs/<name>.yaml [key.sub=value ...]``;
the last stdout line is one JSON object (run id, checkpoint, metrics, registered version).
A config or user mistake is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable

from components.core.names import TaskName
from components.training.config import TrainConfig

DEFAULT_DIR = Path(__file__).with_name("configs")


@dataclass(frozen=True)
class TrainResult:
    """What a training stage hands the next one: its checkpoint, MLflow run, registered version."""

    stage: str
    run_name: str
    task: str
    model: str
    run_id: str | None
    checkpoint: str
    registered_version: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0

    @classmethod
    def from_summary(cls, stage: str, summary: dict[str, Any]) -> TrainResult:
        version = summary.get("registered_version")
        return cls(stage=stage, run_name=summary["run_name"], task=summary["task"], model=summary["model"],
                   run_id=summary.get("mlflow_run_id"), checkpoint=str(summary["checkpoint"]),
                   registered_version=None if version is None else str(version),
                   metrics=dict(summary.get("metrics") or {}), steps=int(summary.get("steps", 0)),
                   seconds=float(summary.get("seconds", 0.0)))

    def to_dict(self) -> dict[str, Any]:
        """The stage's JSON summary (the keys ``run_training`` returns)."""
        return {"run_name": self.run_name, "task": self.task, "model": self.model,
                "mlflow_run_id": self.run_id, "checkpoint": self.checkpoint, "metrics": dict(self.metrics),
                "registered_version": self.registered_version, "steps": self.steps, "seconds": self.seconds}

    def describe(self) -> str:
        shown = "  ".join(f"{k} {v:.4f}" for k, v in self.metrics.items()
                          if k in ("top1", "top5", "map", "map50", "val_loss"))
        version = f"registered v{self.registered_version}" if self.registered_version else "not registered"
        return f"{self.model} ({self.task}) {shown}  {version}  {self.steps} steps in {self.seconds:.0f}s"


def train(stage: str, cfg: TrainConfig, *, config_text: str | None = None,
          callbacks: list | None = None) -> TrainResult:
    """Train, evaluate and register one stage's model (``run_training``), typed."""
    from components.training.trainer import run_training

    return TrainResult.from_summary(stage, run_training(cfg, config_text=config_text, callbacks=callbacks))


def user_errors() -> tuple[type[Exception], ...]:
    """The errors a stage reports as one line (a config, data, registry or storage mistake)."""
    from components.core.checkpoint import CheckpointError
    from components.core.config import ConfigError
    from components.data.errors import DataError
    from components.tracking.registry import RegistryError
    from components.training.storage import StorageError
    from components.training.tracking import TrackingError

    return ConfigError, CheckpointError, DataError, RegistryError, StorageError, TrackingError


def task_check(pipeline: str, tasks: Sequence[TaskName], what: str,
               then: Callable[[TrainConfig], None] | None = None) -> Callable[[TrainConfig], None]:
    """A pipeline's config rule: its ``task`` is one of ``tasks`` (``what`` it trains), then
    ``then`` (the pipeline's own further rule)."""
    from components.core.config import ConfigError

    def check(cfg: TrainConfig) -> None:
        if cfg.task not in tasks:
            raise ConfigError(f"{pipeline} trains {what}: task must be "
                              f"{' or '.join(repr(t) for t in tasks)}")
        if then is not None:
            then(cfg)

    return check


def main(name: str, stage: Callable[..., TrainResult], check: Callable[[TrainConfig], None] | None = None,
         argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m pipelines.{name}",
                                     description=f"vitpipe {name}: train, evaluate, register")
    parser.add_argument("--config", default=str(DEFAULT_DIR / f"{name}.yaml"),
                        help="YAML config (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from components.training.config import load_train_config
    from components.training.progress import LiveProgress

    try:
        cfg = load_train_config(args.config, args.overrides, check=check)
        with LiveProgress():
            result = stage(cfg, config_text=Path(args.config).read_text())
    except user_errors() as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2
    from components.training.trainer import summary_line

    print(summary_line(result.to_dict()), flush=True)
    return 0
