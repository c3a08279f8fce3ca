"""Pretraining on Ray Train: supervised (a ViT-family classifier with the MLP head,
``task: classification``) or self-supervised masked-autoencoder pretraining of a ViT encoder
on the images alone (``task: mae``; labels unused; see docs/training.md).

``python -m pipelines.pretrain --config pipelines/configs/pretrain.yaml [overrides]``
``python -m pipelines.pretrain --config pipelines/configs/pretrain_mae.yaml [overrides]``
"""

from __future__ import annotations

import sys

from components.training.config import TrainConfig
from pipelines._common import TrainResult, main, task_check, train

check = task_check("pretrain", ("classification", "mae"), "classifiers or MAE encoders")


def pretrain(cfg: TrainConfig, *, config_text: str | None = None, callbacks: list | None = None) -> TrainResult:
    """The pretrain stage: checks ``cfg`` is one, then trains, evaluates and registers."""
    check(cfg)
    return train("pretrain", cfg, config_text=config_text, callbacks=callbacks)


if __name__ == "__main__":
    sys.exit(main("pretrain", pretrain, check=check))
