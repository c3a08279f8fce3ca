"""One-to-many matching in the set criterion (``match_repeats``, issue #4)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, generalized_box_iou

from components.models import build_model
from components.models.criterion import batch_targets, build_criterion, repeat_targets, total_loss
from components.models.matcher import HungarianMatcher
from detection_helpers import random_batch

torch.set_num_threads(1)


def _outputs(b: int, q: int, num_classes: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"pred_logits": torch.randn(b, q, num_classes + 1, generator=g),
            "pred_boxes": torch.rand(b, q, 4, generator=g) * 0.5 + 0.2}


def _one_to_one_reference(outputs, batch, num_classes: int) -> dict[str, torch.Tensor]:
    """DETR's losses written out: Hungarian matching once per box, normalised by the box count."""
    targets = batch_targets(batch)
    indices = HungarianMatcher(1.0, 5.0, 2.0)(outputs, targets)
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    target_classes = torch.full(logits.shape[:2], num_classes, dtype=torch.int64)
    src, tgt = [], []
    for i, ((q, j), t) in enumerate(zip(indices, targets)):
        target_classes[i, q] = t["classes"][j]
        src.append(boxes[i, q])
        tgt.append(t["boxes"][j])
    src, tgt = torch.cat(src), torch.cat(tgt)
    weight = torch.ones(num_classes + 1)
    weight[-1] = 0.1
    n = max(float(sum(len(t["classes"]) for t in targets)), 1.0)
    giou = torch.diag(generalized_box_iou(box_convert(src, "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy")))
    return {"loss_ce": F.cross_entropy(logits.transpose(1, 2), target_classes, weight),
            "loss_bbox": F.l1_loss(src, tgt, reduction="sum") / n, "loss_giou": (1 - giou).sum() / n}


def test_one_repeat_is_unchanged():
    batch, outputs = random_batch(), _outputs(2, 8)
    default = build_criterion(3)(outputs, batch)
    one = build_criterion(3, match_repeats=1)(outputs, batch)
    reference = _one_to_one_reference(outputs, batch, 3)
    assert set(default) == set(one) == set(reference)
    for key in reference:
        assert torch.equal(default[key], one[key]), key
        torch.testing.assert_close(one[key], reference[key], rtol=1e-6, atol=1e-6)


def test_repeat_targets_layout():
    (t,) = batch_targets({k: v[1:] for k, v in random_batch().items()})
    (r,) = repeat_targets([t], 3)
    assert r["boxes"].shape == (9, 4) and r["classes"].shape == (9,)
    for j in range(9):
        assert torch.equal(r["boxes"][j], t["boxes"][j % 3]) and r["classes"][j] == t["classes"][j % 3]


@pytest.mark.parametrize("seed", range(4))
def test_three_repeats_give_every_target_three_distinct_queries(seed):
    batch, outputs = random_batch(seed=seed), _outputs(2, 10, seed=seed + 10)  # T_i <= 3, Q = 10 >= 3·3
    criterion = build_criterion(3, match_repeats=3)
    targets = batch_targets(batch)
    for (queries, target_idx), t in zip(criterion.match(outputs, targets), targets):
        assert len(set(queries.tolist())) == len(queries) == 3 * len(t["classes"])
        assert sorted(target_idx.tolist()) == sorted(list(range(len(t["classes"]))) * 3)
    # and the classification target marks all of them as positives
    losses = criterion(outputs, batch)
    assert all(torch.isfinite(v) for v in losses.values())


def test_fewer_queries_than_repeats_match_each_query_once():
    batch, outputs = random_batch(m=3), _outputs(2, 4)
    criterion = build_criterion(3, match_repeats=3)
    for queries, target_idx in criterion.match(outputs, batch_targets(batch)):
        assert len(queries) == 4 and len(set(queries.tolist())) == 4
        assert max(target_idx.tolist().count(j) for j in set(target_idx.tolist())) <= 3


def test_box_losses_are_normalised_by_the_repeated_count():
    """All queries predict one box; each match costs the same L1, so the mean does not depend on k."""
    batch = {"boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.6, 0.2, 0.2]]]),
             "classes": torch.tensor([[0, 1]]), "box_mask": torch.tensor([[True, True]])}
    outputs = {"pred_logits": torch.zeros(1, 8, 3), "pred_boxes": torch.tensor([0.4, 0.55, 0.3, 0.3]).expand(1, 8, 4)}
    one = build_criterion(2)(outputs, batch)
    three = build_criterion(2, match_repeats=3)(outputs, batch)
    torch.testing.assert_close(three["loss_bbox"], one["loss_bbox"])
    torch.testing.assert_close(three["loss_giou"], one["loss_giou"])
    assert three["loss_bbox"].item() > 0.1


def test_empty_images_and_aux_outputs_with_repeats():
    batch = random_batch(b=2, m=2)
    batch["box_mask"][1] = False  # second image has no boxes
    model = build_model("detr_demo", num_classes=3)
    out = model(torch.zeros(2, 16, 768, dtype=torch.uint8), (4, 4))
    criterion = build_criterion(3, match_repeats=3)
    losses = criterion(out, batch)
    assert {"loss_ce_0", "loss_bbox_0", "loss_giou_0"} <= set(losses)
    assert torch.isfinite(total_loss(losses, criterion.weight_dict))
    (q0, _), (q1, _) = criterion.match(out, batch_targets(batch))
    assert len(q0) == 3 and len(q1) == 0


def test_loss_falls_on_an_overfit_batch_with_three_repeats():
    torch.manual_seed(0)
    batch = random_batch(b=2, m=2, seed=3)
    model = build_model("detr_demo", num_classes=3, img_size=64)
    criterion = build_criterion(3, match_repeats=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    patches = torch.randint(0, 256, (2, 16, 768), dtype=torch.uint8, generator=g)
    losses = []
    for _ in range(60):
        loss = total_loss(criterion(model(patches, (4, 4)), batch), criterion.weight_dict)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:3]) / 3, losses
