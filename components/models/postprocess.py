"""Detector outputs → detections in original image pixels (xyxy)."""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms

from components.data.boxes import batch_to_pixels_xyxy


def check_nms_iou(nms_iou: float | None) -> float | None:
    """A detector's NMS setting, checked: an IoU in (0, 1], or None (no NMS)."""
    if nms_iou is not None and not 0.0 < nms_iou <= 1.0:
        raise ValueError(f"nms_iou must lie in (0, 1] or be None, got {nms_iou}")
    return nms_iou


def model_nms_iou(model: torch.nn.Module) -> float | None:
    """The NMS setting a detector carries (``model.nms_iou``; through a DDP ``.module``)."""
    return getattr(getattr(model, "module", model), "nms_iou", None)


@torch.no_grad()
def detections(outputs: dict, orig_size_hw: torch.Tensor, *, score_threshold: float = 0.0, top_k: int = 100,
               nms_iou: float | None = None) -> list[dict[str, torch.Tensor]]:
    """Per image, the ``top_k`` best queries scoring at least ``score_threshold``; with
    ``nms_iou``, class-aware non-maximum suppression (``torchvision.ops.batched_nms``) over
    those queries first: of two same-class boxes overlapping with IoU > ``nms_iou`` the
    lower-scoring one is dropped (the duplicates of one-to-many matching). The setting is
    the model's (``model.nms_iou``, None for one-to-one detectors).

    Args:
        outputs: ``pred_logits [B, Q, C+1]`` (last = no object), ``pred_boxes [B, Q, 4]``
            normalised cxcywh relative to the model input.
        orig_size_hw: ``[B, 2]`` (height, width) of the original images.
    Returns:
        per image ``{"boxes": [K, 4] float xyxy pixels, "scores": [K], "labels": [K] int64,
        "queries": [K] int64}`` (``queries``: the query each detection comes from), sorted by
        descending score; a query's score is its best object-class probability.
    """
    prob = outputs["pred_logits"].float().softmax(-1)[..., :-1]
    scores, labels = prob.max(-1)
    boxes = batch_to_pixels_xyxy(outputs["pred_boxes"].float(), orig_size_hw.to(prob.device))
    h = orig_size_hw[:, 0:1].to(boxes)
    w = orig_size_hw[:, 1:2].to(boxes)
    limits = torch.cat([w, h, w, h], dim=-1).unsqueeze(1)
    boxes = torch.minimum(boxes.clamp(min=0), limits)
    result = []
    for s, lab, b in zip(scores, labels, boxes):
        keep = (s >= score_threshold).nonzero().squeeze(1)
        if nms_iou is not None:
            keep = keep[batched_nms(b[keep], s[keep], lab[keep], nms_iou)]
        order = keep[s[keep].argsort(descending=True)][:top_k]
        result.append({"boxes": b[order], "scores": s[order], "labels": lab[order].to(torch.int64),
                       "queries": order})
    return result
