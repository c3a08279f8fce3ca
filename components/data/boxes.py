"""Box formats, stated once.

- **Annotations** (COCO files, albumentations ``BboxParams(format="coco")``): ``xywh`` in
  pixels of the original image, ``(x_min, y_min, width, height)``.
- **Batches and model outputs** (the batch contract): ``cxcywh`` normalised to ``[0, 1]`` by
  the model input's width and height, ``(center_x, center_y, width, height)``.
- **Matching, GIoU and API answers**: ``xyxy``, ``(x_min, y_min, x_max, y_max)``; answers
  are in original image pixels.

Every conversion goes through the functions here (torchvision.ops underneath), so the
three cannot be confused.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import box_convert

ANNOTATION_FORMAT = "xywh"  # COCO, pixels
BATCH_FORMAT = "cxcywh"  # normalised to the model input
OUTPUT_FORMAT = "xyxy"  # pixels of the original image in answers


def coco_to_batch(boxes_xywh: np.ndarray, width: int, height: int) -> np.ndarray:
    """``[M, 4]`` COCO xywh pixels of a ``width × height`` image → normalised cxcywh."""
    boxes = np.asarray(boxes_xywh, dtype=np.float32).reshape(-1, 4)
    out = np.empty_like(boxes)
    out[:, 0] = (boxes[:, 0] + boxes[:, 2] / 2) / width
    out[:, 1] = (boxes[:, 1] + boxes[:, 3] / 2) / height
    out[:, 2] = boxes[:, 2] / width
    out[:, 3] = boxes[:, 3] / height
    return out


def batch_to_pixels_xyxy(boxes_cxcywh: torch.Tensor, orig_size_hw: torch.Tensor) -> torch.Tensor:
    """Normalised cxcywh ``[..., Q, 4]`` → xyxy pixels of the original image.

    ``orig_size_hw`` is ``[..., 2]`` (height, width), broadcast over the box dimension.
    Valid because the data layer resizes whole images (no crop) for evaluation and serving.
    """
    xyxy = box_convert(boxes_cxcywh, in_fmt="cxcywh", out_fmt="xyxy")
    h = orig_size_hw[..., 0:1].to(xyxy.dtype)
    w = orig_size_hw[..., 1:2].to(xyxy.dtype)
    scale = torch.cat([w, h, w, h], dim=-1).unsqueeze(-2)
    return xyxy * scale


def xyxy_to_coco(boxes_xyxy: torch.Tensor) -> torch.Tensor:
    """xyxy → COCO xywh (same units), for COCO evaluation."""
    return box_convert(boxes_xyxy, in_fmt="xyxy", out_fmt="xywh")


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    return box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")
