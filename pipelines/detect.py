"""Detector training: YOLOS (optionally initialised from a pretrained ViT checkpoint via
``model.init_from``) or DETR, with the set criterion; COCO mAP evaluation at the end.

``python -m pipelines.detect --config pipelines/configs/detect.yaml [overrides]``
"""

from __future__ import annotations

import sys

from components.training.config import TrainConfig
from pipelines._common import TrainResult, main, task_check, train

check = task_check("detect", ("detection",), "detectors")


def detect(cfg: TrainConfig, *, config_text: str | None = None, callbacks: list | None = None) -> TrainResult:
    """The detect stage: checks ``cfg`` is one, then trains, evaluates and registers."""
    check(cfg)
    return train("detect", cfg, config_text=config_text, callbacks=callbacks)


if __name__ == "__main__":
    sys.exit(main("detect", detect, check=check))
