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


CLASS_SCORES = ("softmax", "sigmoid")


def detection_settings(model: torch.nn.Module) -> dict:
    """What :func:`detections` needs to know about a detector: ``{"nms_iou", "class_scores"}``
    (``model.class_scores``: ``"softmax"`` with a trailing no-object class, the default, or
    ``"sigmoid"``, per-class scores with no no-object class; through a DDP ``.module``)."""
    return {"nms_iou": model_nms_iou(model),
            "class_scores": getattr(getattr(model, "module", model), "class_scores", "softmax")}


def _scored_candidates(logits: torch.Tensor, class_scores: str) -> tuple[torch.Tensor, ...]:
    """Class logits ``[B, Q, K]`` → per candidate ``scores, labels, queries``, each ``[B, M]``.

    ``softmax``: one candidate per query (``M = Q``), its best object class (the last of the
    ``K = C + 1`` columns is "no object"). ``sigmoid``: every (query, class) pair is a
    candidate (``M = Q·C``), scored ``sigmoid(logit)``: one query may detect several classes,
    as the focal-loss DETRs' own postprocessing (a top-k over queries × classes) allows.
    """
    if class_scores == "softmax":
        scores, labels = logits.softmax(-1)[..., :-1].max(-1)
        queries = torch.arange(logits.shape[1], device=logits.device).expand_as(labels)
        return scores, labels, queries
    if class_scores == "sigmoid":
        b, q, c = logits.shape
        scores = logits.sigmoid().reshape(b, q * c)
        flat = torch.arange(q * c, device=logits.device).expand(b, -1)
        return scores, flat % c, flat // c
    raise ValueError(f"class_scores must be one of {CLASS_SCORES}, got {class_scores!r}")


@torch.no_grad()
def detections(outputs: dict, orig_size_hw: torch.Tensor, *, score_threshold: float = 0.0, top_k: int = 100,
               nms_iou: float | None = None, class_scores: str = "softmax") -> list[dict[str, torch.Tensor]]:
    """Per image, the ``top_k`` best queries scoring at least ``score_threshold``; with
    ``nms_iou``, class-aware non-maximum suppression (``torchvision.ops.batched_nms``) over
    those queries first: of two same-class boxes overlapping with IoU > ``nms_iou`` the
    lower-scoring one is dropped (the duplicates of one-to-many matching). The setting is
    the model's (``model.nms_iou``, None for one-to-one detectors); callers pass
    ``**detection_settings(model)``.

    Args:
        outputs: ``pred_logits [B, Q, C+1]`` (softmax; last = no object) or ``[B, Q, C]``
            (sigmoid), ``pred_boxes [B, Q, 4]`` normalised cxcywh relative to the model input.
        orig_size_hw: ``[B, 2]`` (height, width) of the original images.
        class_scores: ``"softmax"`` (DETR, YOLOS: a query's score is its best object-class
            probability) or ``"sigmoid"`` (RT-DETRv2, D-FINE, LW-DETR: each (query, class)
            pair is a candidate scored by its sigmoid; see :func:`_scored_candidates`).
    Returns:
        per image ``{"boxes": [K, 4] float xyxy pixels, "scores": [K], "labels": [K] int64,
        "queries": [K] int64}`` (``queries``: the query each detection comes from), sorted by
        descending score.
    """
    logits = outputs["pred_logits"].float()
    scores, labels, queries = _scored_candidates(logits, class_scores)
    boxes = batch_to_pixels_xyxy(outputs["pred_boxes"].float(), orig_size_hw.to(logits.device))
    h = orig_size_hw[:, 0:1].to(boxes)
    w = orig_size_hw[:, 1:2].to(boxes)
    limits = torch.cat([w, h, w, h], dim=-1).unsqueeze(1)
    boxes = torch.minimum(boxes.clamp(min=0), limits)
    result = []
    for s, lab, qry, b in zip(scores, labels, queries, boxes):
        keep = (s >= score_threshold).nonzero().squeeze(1)
        if nms_iou is not None:
            keep = keep[batched_nms(b[qry[keep]], s[keep], lab[keep], nms_iou)]
        order = keep[s[keep].argsort(descending=True)][:top_k]
        result.append({"boxes": b[qry[order]], "scores": s[order], "labels": lab[order].to(torch.int64),
                       "queries": qry[order]})
    return result
