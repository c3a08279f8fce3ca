"""What every training pipeline entrypoint shares: argv → validated config → run → summary.

``python -m pipelines.<name> --config pipelines/configs/<name>.yaml [key.sub=value ...]``;
the last stdout line is one JSON object (run id, checkpoint, metrics, registered version).
A config or user mistake is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from collections.abc import Sequence
from typing import Callable

from components.core.names import TaskName
from components.training.config import TrainConfig

DEFAULT_DIR = Path(__file__).with_name("configs")


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


def main(name: str, argv: list[str] | None = None,
         check: Callable[[TrainConfig], None] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m pipelines.{name}",
                                     description=f"vitpipe {name}: train, evaluate, register")
    parser.add_argument("--config", default=str(DEFAULT_DIR / f"{name}.yaml"),
                        help="YAML config (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from components.core.checkpoint import CheckpointError
    from components.core.config import ConfigError
    from components.data.errors import DataError
    from components.tracking.registry import RegistryError
    from components.training.config import load_train_config
    from components.training.storage import StorageError
    from components.training.tracking import TrackingError

    try:
        cfg = load_train_config(args.config, args.overrides, check=check)
        from components.training.trainer import run_training, summary_line

        summary = run_training(cfg, config_text=Path(args.config).read_text())
    except (ConfigError, CheckpointError, DataError, RegistryError, StorageError, TrackingError) as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2
    print(summary_line(summary), flush=True)
    return 0
