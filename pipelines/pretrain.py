"""Supervised pretraining of a ViT-family classifier (MLP head) on Ray Train.

``python -m pipelines.pretrain --config pipelines/configs/pretrain.yaml [overrides]``
"""

from __future__ import annotations

import sys

from components.core.config import ConfigError
from components.training.config import TrainConfig
from pipelines._common import main


def check(cfg: TrainConfig) -> None:
    if cfg.task != "classification":
        raise ConfigError("pretrain trains classifiers: task must be 'classification'")


if __name__ == "__main__":
    sys.exit(main("pretrain", check=check))
