"""Pretraining on Ray Train: supervised (a ViT-family classifier with the MLP head,
``task: classification``) or self-supervised masked-autoencoder pretraining of a ViT encoder
on the images alone (``task: mae``; labels unused; see docs/training.md).

``python -m pipelines.pretrain --config pipelines/configs/pretrain.yaml [overrides]``
``python -m pipelines.pretrain --config pipelines/configs/pretrain_mae.yaml [overrides]``
"""

from __future__ import annotations

import sys

from pipelines._common import main, task_check

check = task_check("pretrain", ("classification", "mae"), "classifiers or MAE encoders")


if __name__ == "__main__":
    sys.exit(main("pretrain", check=check))
