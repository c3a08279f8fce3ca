"""Hungarian matching of predictions to ground-truth boxes (DETR's matcher).

One cost matrix for the whole batch under ``no_grad``, split per image and solved on the CPU
with ``scipy.optimize.linear_sum_assignment``. Stateless.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou


class HungarianMatcher:
    """Cost = ``cost_class · (−p(class)) + cost_bbox · L1(cxcywh) + cost_giou · (−GIoU(xyxy))``."""

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> None:
        if cost_class == cost_bbox == cost_giou == 0:
            raise ValueError("all matcher costs are 0")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    @torch.no_grad()
    def cost_matrix(self, pred_logits: torch.Tensor, pred_boxes: torch.Tensor, tgt_classes: torch.Tensor,
                    tgt_boxes: torch.Tensor) -> torch.Tensor:
        """``[Q, C+1]``, ``[Q, 4]`` predictions vs ``[T]``, ``[T, 4]`` targets → cost ``[Q, T]``."""
        prob = pred_logits.float().softmax(-1)
        boxes = pred_boxes.float()
        tgt = tgt_boxes.float()
        cost_class = -prob[:, tgt_classes]
        cost_bbox = torch.cdist(boxes, tgt, p=1)
        giou = generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy"))
        return self.cost_bbox * cost_bbox + self.cost_class * cost_class - self.cost_giou * giou

    @torch.no_grad()
    def __call__(self, outputs: dict, targets: list[dict[str, torch.Tensor]]
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match each image's queries to its targets.

        Args:
            outputs: ``pred_logits [B, Q, C+1]``, ``pred_boxes [B, Q, 4]`` (normalised cxcywh).
            targets: per image ``{"classes": [T_i] int64, "boxes": [T_i, 4] cxcywh}``.
        Returns:
            per image ``(query_idx [K_i], target_idx [K_i])`` int64 with
            ``K_i = min(Q, T_i)``, the assignment of least total cost.
        """
        bsz, nq = outputs["pred_logits"].shape[:2]
        sizes = [len(t["boxes"]) for t in targets]
        if sum(sizes) == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return [(empty, empty) for _ in range(bsz)]
        cost = self.cost_matrix(
            outputs["pred_logits"].flatten(0, 1), outputs["pred_boxes"].flatten(0, 1),
            torch.cat([t["classes"] for t in targets]), torch.cat([t["boxes"] for t in targets]),
        ).view(bsz, nq, -1).cpu()
        result = []
        for i, block in enumerate(cost.split(sizes, dim=-1)):
            rows, cols = linear_sum_assignment(block[i].numpy())
            result.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return result
