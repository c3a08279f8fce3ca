"""The set criterion shared by DETR and YOLOS: Hungarian matching, then named loss terms.

``criterion(outputs, batch) -> {"loss_ce", "loss_bbox", "loss_giou"}`` plus the same terms
suffixed ``_0 .. _{L-2}`` for each auxiliary decoder output. ``criterion.weight_dict`` maps
base term → weight, fixed at construction (auxiliary terms take their base term's weight);
:func:`total_loss` is the one function that totals a loss dict, in training, validation
and tests alike.

- ``loss_ce``: cross-entropy over all queries, unmatched ones labelled "no object"
  (class index ``num_classes``) with weight ``eos_coef``.
- ``loss_bbox``: L1 of matched normalised cxcywh boxes / number of boxes.
- ``loss_giou``: 1 − GIoU of matched boxes / number of boxes.

One-to-many matching (``match_repeats = k > 1``): each image's targets are repeated k times
before the Hungarian matching, so up to k distinct queries are positives for every box (more
positive queries per image, faster learning of box regression; the duplicates it teaches
the model to emit are removed at inference by NMS, ``postprocess.detections(nms_iou=...)``).
The number of boxes is then the repeated count. ``k = 1`` is DETR's one-to-one matching.

The number of boxes is summed over all ranks when ``torch.distributed`` is initialised
(and divided by the world size), so every rank normalises by the same count.
"""

from __future__ import annotations

import re

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

from components.models.matcher import HungarianMatcher

_AUX_SUFFIX = re.compile(r"_\d+$")


def batch_targets(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The batch contract's padded ``boxes [B, M, 4]``, ``classes [B, M]``, ``box_mask [B, M]``
    → per image ``{"boxes": [T_i, 4], "classes": [T_i]}``."""
    mask = batch["box_mask"].bool()
    return [
        {"boxes": batch["boxes"][i][mask[i]].float(), "classes": batch["classes"][i][mask[i]].long()}
        for i in range(mask.shape[0])
    ]


def repeat_targets(targets: list[dict[str, torch.Tensor]], k: int) -> list[dict[str, torch.Tensor]]:
    """Each image's ``{"boxes": [T_i, 4], "classes": [T_i]}`` → ``[k·T_i, 4]``, ``[k·T_i]``
    (the whole list k times: repeated row ``j`` is original row ``j % T_i``)."""
    if k == 1:
        return targets
    return [{"boxes": t["boxes"].repeat(k, 1), "classes": t["classes"].repeat(k)} for t in targets]


class SetCriterion(nn.Module):
    def __init__(self, num_classes: int, matcher: HungarianMatcher, *, eos_coef: float = 0.1,
                 weight_dict: dict[str, float], match_repeats: int = 1) -> None:
        super().__init__()
        if match_repeats < 1:
            raise ValueError(f"match_repeats must be >= 1, got {match_repeats}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.eos_coef = eos_coef
        self.match_repeats = match_repeats
        self.weight_dict = dict(weight_dict)
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = eos_coef
        self.register_buffer("class_weight", class_weight)

    def match(self, outputs: dict, targets: list[dict[str, torch.Tensor]]
              ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image ``(query_idx [K_i], target_idx [K_i])`` with ``K_i = min(Q, k·T_i)``:
        distinct queries; ``target_idx`` indexes the *original* ``T_i`` targets, each at most
        ``k = match_repeats`` times."""
        indices = self.matcher(outputs, repeat_targets(targets, self.match_repeats))
        if self.match_repeats == 1:
            return indices
        return [(q, j % max(len(t["classes"]), 1)) for (q, j), t in zip(indices, targets)]

    def _num_boxes(self, targets: list[dict], device: torch.device) -> torch.Tensor:
        count = torch.tensor(float(self.match_repeats * sum(len(t["classes"]) for t in targets)), device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
            count = count / dist.get_world_size()
        return count.clamp(min=1.0)

    def _losses(self, outputs: dict, targets: list[dict], num_boxes: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        indices = self.match(outputs, targets)
        batch_idx = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)]).to(logits.device)
        query_idx = torch.cat([q for q, _ in indices]).to(logits.device)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        matched_classes = torch.cat([t["classes"][j.to(t["classes"].device)] for t, (_, j) in zip(targets, indices)])
        target_classes[batch_idx, query_idx] = matched_classes.to(logits.device)
        loss_ce = F.cross_entropy(logits.float().transpose(1, 2), target_classes, self.class_weight.to(logits.device))
        src_boxes = boxes[batch_idx, query_idx].float()
        tgt_boxes = torch.cat([t["boxes"][j.to(t["boxes"].device)] for t, (_, j) in zip(targets, indices)])
        tgt_boxes = tgt_boxes.to(src_boxes)
        loss_bbox = F.l1_loss(src_boxes, tgt_boxes, reduction="sum") / num_boxes
        giou = torch.diag(generalized_box_iou(box_convert(src_boxes, "cxcywh", "xyxy"),
                                              box_convert(tgt_boxes, "cxcywh", "xyxy")))
        loss_giou = (1 - giou).sum() / num_boxes
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def forward(self, outputs: dict, batch: dict[str, torch.Tensor] | list[dict]) -> dict[str, torch.Tensor]:
        """Loss terms for a detector's ``outputs`` against a batch (the batch contract's
        detection keys) or a list of per-image ``{"boxes", "classes"}`` targets."""
        targets = batch if isinstance(batch, list) else batch_targets(batch)
        num_boxes = self._num_boxes(targets, outputs["pred_logits"].device)
        losses = self._losses(outputs, targets, num_boxes)
        for i, aux in enumerate(outputs.get("aux_outputs") or []):
            for key, value in self._losses(aux, targets, num_boxes).items():
                losses[f"{key}_{i}"] = value
        return losses


def build_criterion(num_classes: int, *, class_weight: float = 1.0, bbox_weight: float = 5.0,
                    giou_weight: float = 2.0, eos_coef: float = 0.1, match_repeats: int = 1) -> SetCriterion:
    """DETR's defaults: matcher and loss weights class 1, L1 5, GIoU 2; no-object weight 0.1;
    one-to-one matching (``match_repeats=1``; k > 1: each box matched to k queries)."""
    matcher = HungarianMatcher(cost_class=class_weight, cost_bbox=bbox_weight, cost_giou=giou_weight)
    weights = {"loss_ce": class_weight, "loss_bbox": bbox_weight, "loss_giou": giou_weight}
    return SetCriterion(num_classes, matcher, eos_coef=eos_coef, weight_dict=weights, match_repeats=match_repeats)


def loss_weight(weight_dict: dict[str, float], key: str) -> float:
    """The weight of a loss term; auxiliary terms (``loss_ce_3``) fall back to their base term."""
    if key in weight_dict:
        return weight_dict[key]
    return weight_dict[_AUX_SUFFIX.sub("", key)]


def total_loss(losses: dict[str, torch.Tensor], weight_dict: dict[str, float]) -> torch.Tensor:
    """``sum(losses[k] * weight(k))`` over the terms that have a weight, in ``losses`` order;
    terms without one (logged only, e.g. a library's detached parts) are left out."""
    terms = [losses[k] * loss_weight(weight_dict, k) for k in losses
             if k in weight_dict or _AUX_SUFFIX.sub("", k) in weight_dict]
    if not terms:
        raise KeyError(f"no loss term among {sorted(losses)} has a weight in {sorted(weight_dict)}")
    return sum(terms)
