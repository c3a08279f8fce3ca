"""Detector training: YOLOS (optionally initialised from a pretrained ViT checkpoint via
``model.init_from``) or DETR, with the set criterion; COCO mAP evaluation at the end.

``python -m pipelines.detect --config pipelines/configs/detect.yaml [overrides]``
"""

from __future__ import annotations

import sys

from components.core.config import ConfigError
from components.training.config import TrainConfig
from pipelines._common import main


def check(cfg: TrainConfig) -> None:
    if cfg.task != "detection":
        raise ConfigError("detect trains detectors: task must be 'detection'")


if __name__ == "__main__":
    sys.exit(main("detect", check=check))
