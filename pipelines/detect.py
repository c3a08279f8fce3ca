"""Detector training: YOLOS (optionally initialised from a pretrained ViT checkpoint via
``model.init_from``) or DETR, with the set criterion; COCO mAP evaluation at the end.

``python -m pipelines.detect --config pipelines/configs/detect.yaml [overrides]``
"""

from __future__ import annotations

import sys

from pipelines._common import main, task_check

check = task_check("detect", ("detection",), "detectors")


if __name__ == "__main__":
    sys.exit(main("detect", check=check))
