"""Fine-tuning: a pretrained classifier checkpoint (``model.init_from``: a checkpoint
directory or ``models:/NAME@ALIAS``), a fresh linear head, possibly a higher resolution
(position embeddings interpolated), layer-wise lr decay.

``python -m pipelines.finetune --config pipelines/configs/finetune.yaml model.init_from=DIR``
"""

from __future__ import annotations

import sys

from components.core.config import ConfigError
from components.training.config import TrainConfig
from pipelines._common import TrainResult, main, train


def check(cfg: TrainConfig) -> None:
    if cfg.task != "classification":
        raise ConfigError("finetune trains classifiers: task must be 'classification'")
    if not cfg.model.init_from:
        raise ConfigError("finetune needs model.init_from (a checkpoint directory or models:/ URI)")


def finetune(cfg: TrainConfig, *, config_text: str | None = None, callbacks: list | None = None) -> TrainResult:
    """The finetune stage: checks ``cfg`` is one, then trains, evaluates and registers."""
    check(cfg)
    return train("finetune", cfg, config_text=config_text, callbacks=callbacks)


if __name__ == "__main__":
    sys.exit(main("finetune", finetune, check=check))
