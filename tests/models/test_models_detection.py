"""Detectors, the Hungarian matcher, the set criterion and post-processing."""

from __future__ import annotations

import itertools

import pytest
import torch

from components.models import build_model, get_spec, list_models
from components.models.criterion import batch_targets, build_criterion, loss_weight, total_loss
from components.models.matcher import HungarianMatcher
from components.models.postprocess import detections
from components.models.yolos import init_from_classifier
from detection_helpers import random_batch

SHRINK = {
    "yolos": dict(depth=2, embed_dim=48, num_heads=2, num_det_tokens=10),
    "detr": dict(num_encoder_layers=1, num_decoder_layers=2, hidden_dim=32, num_heads=2, ffn_dim=64,
                 num_queries=10),
}


def small_detector(name: str, num_classes: int = 3):
    from components.models.registry import get_spec

    spec = get_spec(name)
    overrides = {} if name.endswith("_demo") else SHRINK[spec.family]
    return build_model(name, num_classes=num_classes, img_size=64, **overrides)


@pytest.mark.parametrize("name", [n for n in list_models("detection") if get_spec(n).family in SHRINK])
def test_forward_backward_every_detector(name):  # the transformers detectors: test_models_hf_detectors.py
    torch.manual_seed(0)
    model = small_detector(name)
    assert model.task == "detection"
    gh, gw = model.grid_size
    patches = torch.randint(0, 256, (2, gh * gw, 768), dtype=torch.uint8)
    out = model(patches, (gh, gw))
    q = out["pred_logits"].shape[1]
    assert out["pred_logits"].shape == (2, q, 4) and out["pred_boxes"].shape == (2, q, 4)
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    expected_aux = len(model.decoder) - 1 if hasattr(model, "decoder") else 0
    assert len(out["aux_outputs"]) == expected_aux
    criterion = build_criterion(3)
    losses = criterion(out, random_batch())
    loss = total_loss(losses, criterion.weight_dict)
    assert torch.isfinite(loss)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"


def test_detr_has_aux_losses_for_every_decoder_layer():
    model = build_model("detr_demo", num_classes=3)
    out = model(torch.zeros(1, 16, 768, dtype=torch.uint8), (4, 4))
    criterion = build_criterion(3)
    losses = criterion(out, random_batch(b=1))
    assert {"loss_ce_0", "loss_bbox_0", "loss_giou_0"} <= set(losses)
    # Weights are fixed at construction: auxiliary terms take their base term's.
    assert set(criterion.weight_dict) == {"loss_ce", "loss_bbox", "loss_giou"}
    assert all(loss_weight(criterion.weight_dict, k) == criterion.weight_dict[k.rsplit("_", 1)[0]]
               for k in losses if k[-1].isdigit())
    criterion(out, random_batch(b=1))
    assert set(criterion.weight_dict) == {"loss_ce", "loss_bbox", "loss_giou"}  # forward leaves it alone


def _brute_force_cost(cost: torch.Tensor) -> float:
    q, t = cost.shape
    if q >= t:
        return min(sum(cost[p[j], j].item() for j in range(t)) for p in itertools.permutations(range(q), t))
    return min(sum(cost[i, p[i]].item() for i in range(q)) for p in itertools.permutations(range(t), q))


@pytest.mark.parametrize("seed", range(6))
def test_matcher_is_optimal_against_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    q, t = [(5, 3), (4, 4), (3, 5), (6, 2), (4, 1), (5, 5)][seed]
    outputs = {"pred_logits": torch.randn(1, q, 4, generator=g), "pred_boxes": torch.rand(1, q, 4, generator=g) * 0.5 + 0.1}
    target = {"classes": torch.randint(0, 3, (t,), generator=g), "boxes": torch.rand(t, 4, generator=g) * 0.5 + 0.1}
    matcher = HungarianMatcher()
    (rows, cols), = matcher(outputs, [target])
    assert len(rows) == len(cols) == min(q, t)
    assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
    cost = matcher.cost_matrix(outputs["pred_logits"][0], outputs["pred_boxes"][0], target["classes"], target["boxes"])
    assert cost[rows, cols].sum().item() == pytest.approx(_brute_force_cost(cost), abs=1e-5)


def test_matcher_with_no_targets():
    outputs = {"pred_logits": torch.randn(2, 5, 4), "pred_boxes": torch.rand(2, 5, 4)}
    empty = {"classes": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    for rows, cols in HungarianMatcher()(outputs, [empty, empty]):
        assert rows.numel() == cols.numel() == 0


def test_perfect_predictions_give_near_zero_loss():
    batch = random_batch(b=2, m=3, num_classes=3)
    q, c = 8, 3
    logits = torch.full((2, q, c + 1), -30.0)
    logits[..., c] = 30.0  # "no object" everywhere ...
    boxes = torch.rand(2, q, 4) * 0.2 + 0.3
    for i, t in enumerate(batch_targets(batch)):
        for j, (cls, box) in enumerate(zip(t["classes"], t["boxes"])):
            slot = 2 * j + 1  # ... except at the slots holding the ground truth
            logits[i, slot] = -30.0
            logits[i, slot, cls] = 30.0
            boxes[i, slot] = box
    criterion = build_criterion(c)
    losses = criterion({"pred_logits": logits, "pred_boxes": boxes}, batch)
    assert total_loss(losses, criterion.weight_dict).item() < 1e-5
    # and a wrong class costs something
    logits[0, 1] = logits[0, 1].roll(1)
    assert criterion({"pred_logits": logits, "pred_boxes": boxes}, batch)["loss_ce"].item() > 1.0


def test_postprocess_maps_to_original_pixels():
    logits = torch.tensor([[[5.0, 0.0, 0.0], [0.0, 0.0, 9.0], [0.0, 4.0, 0.0]]])  # 2 classes + no-object
    boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.5], [0.1, 0.1, 0.1, 0.1], [0.25, 0.5, 0.5, 1.0]]])
    (det,) = detections({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 200]]), score_threshold=0.5)
    assert det["labels"].tolist() == [0, 1]
    assert det["scores"][0] > det["scores"][1]
    torch.testing.assert_close(det["boxes"], torch.tensor([[50.0, 25.0, 150.0, 75.0], [0.0, 0.0, 100.0, 100.0]]))
    (top1,) = detections({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 200]]), top_k=1)
    assert len(top1["boxes"]) == 1 and top1["labels"].item() == 0


def test_yolos_initialises_from_a_classification_vit():
    classifier = build_model("vit_demo", num_classes=7, img_size=64)
    detector = build_model("yolos_demo", num_classes=3, img_size=96)
    left = init_from_classifier(detector, classifier.state_dict())
    assert {"det_token", "det_pos_embed"} <= set(left) and not any(k.startswith("backbone.") for k in left)
    assert detector.backbone.pos_embed.shape[1] == 1 + 36
    torch.testing.assert_close(detector.backbone.cls_token, classifier.backbone.cls_token)
    torch.testing.assert_close(detector.backbone.blocks[3].mlp.fc2.weight, classifier.backbone.blocks[3].mlp.fc2.weight)
    with pytest.raises(ValueError):
        init_from_classifier(detector, {"head.fc.weight": torch.zeros(1)})


def test_yolos_initialises_from_an_avg_pooled_vit():
    """A classifier trained with global_pool="avg" has an fc_norm that belongs to its head."""
    classifier = build_model("vit_demo", num_classes=5, img_size=64, global_pool="avg")
    assert any(k.startswith("backbone.fc_norm.") for k in classifier.state_dict())
    detector = build_model("yolos_demo", num_classes=3, img_size=64)
    left = init_from_classifier(detector, classifier.state_dict())
    # timm's avg-pooled ViT has no final token norm (fc_norm replaces it): that one keeps its init
    assert {k for k in left if k.startswith("backbone.")} == {"backbone.norm.weight", "backbone.norm.bias"}
    torch.testing.assert_close(detector.backbone.blocks[0].attn.qkv.weight, classifier.backbone.blocks[0].attn.qkv.weight)


def _toy_detection_batch():
    """Four 64x64 images with 1–2 flat-coloured boxes each; the colour is the class."""
    from components.data.patchify import images_to_patches

    s = 64
    boxes = torch.tensor([[[0.3, 0.3, 0.3, 0.3], [0.7, 0.7, 0.3, 0.4]], [[0.5, 0.5, 0.5, 0.5], [0, 0, 0, 0]],
                          [[0.25, 0.7, 0.3, 0.4], [0.7, 0.3, 0.4, 0.3]], [[0.6, 0.4, 0.4, 0.4], [0, 0, 0, 0]]])
    classes = torch.tensor([[0, 1], [2, 0], [1, 2], [0, 0]])
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 0]]).bool()
    colors = torch.tensor([[220, 40, 40], [40, 220, 40], [40, 40, 220]], dtype=torch.uint8)
    images = torch.full((4, 3, s, s), 30, dtype=torch.uint8)
    for i, j in mask.nonzero().tolist():
        cx, cy, w, h = (boxes[i, j] * s).tolist()
        images[i, :, int(cy - h / 2):int(cy + h / 2), int(cx - w / 2):int(cx + w / 2)] = colors[classes[i, j]][:, None, None]
    patches, grid = images_to_patches(images, 16)
    return {"patches": patches, "grid": grid, "boxes": boxes, "classes": classes, "box_mask": mask}


@pytest.mark.slow
@pytest.mark.parametrize("name,steps,clip", [("yolos_demo", 100, 1.0), ("detr_demo", 120, 0.1)])
def test_tiny_detector_overfits_one_batch(name, steps, clip):
    """The tiny detectors can learn: on one batch the loss falls and matched boxes converge."""
    torch.manual_seed(0)
    batch = _toy_detection_batch()
    model = build_model(name, num_classes=3)
    criterion = build_criterion(3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    first = None
    for _ in range(steps):
        losses = criterion(model(batch["patches"], batch["grid"]), batch)
        loss = total_loss(losses, criterion.weight_dict)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model(batch["patches"], batch["grid"])
        final = criterion(out, batch)
    assert total_loss(final, criterion.weight_dict).item() < 0.35 * first
    assert final["loss_giou"].item() < 0.35  # mean 1 - GIoU of matched boxes
    # every ground-truth box's matched query predicts its class (argmax includes "no object")
    indices = criterion.matcher(out, batch_targets(batch))
    right = total = 0
    for i, (queries, targets) in enumerate(indices):
        predicted = out["pred_logits"][i, queries].argmax(-1)
        truth = batch["classes"][i][batch["box_mask"][i]][targets]
        right += int((predicted == truth).sum())
        total += len(truth)
    assert total == 6 and right >= 5
    (det,) = detections({k: v[:1] for k, v in out.items() if k != "aux_outputs"}, torch.tensor([[64, 64]]), top_k=2)
    assert det["boxes"].shape == (2, 4)
