"""Class-aware NMS in post-processing, and the detector's own ``nms_iou`` setting (issue #4)."""

from __future__ import annotations

import pytest
import torch

from components.core.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from components.models import build_model, load_weights
from components.models.postprocess import detections

torch.set_num_threads(1)


def _two_boxes(second_class: int) -> dict[str, torch.Tensor]:
    """Query 0: class 0 at the centre, score ~0.99; query 1: the same box shifted by 2% of the
    image (IoU ~0.9), class ``second_class``, score ~0.9; query 2: no object."""
    logits = torch.full((1, 3, 3), -10.0)  # 2 classes + no object
    logits[0, 0, 0] = 5.0
    logits[0, 1, second_class] = 2.3
    logits[0, 2, 2] = 10.0
    boxes = torch.tensor([[[0.5, 0.5, 0.4, 0.4], [0.51, 0.51, 0.4, 0.4], [0.2, 0.2, 0.1, 0.1]]])
    return {"pred_logits": logits, "pred_boxes": boxes}


ORIG = torch.tensor([[100, 100]])


def test_duplicates_of_one_class_collapse_with_nms_only():
    outputs = _two_boxes(second_class=0)
    (plain,) = detections(outputs, ORIG, score_threshold=0.5)
    assert plain["labels"].tolist() == [0, 0] and plain["queries"].tolist() == [0, 1]
    (nms,) = detections(outputs, ORIG, score_threshold=0.5, nms_iou=0.7)
    assert nms["labels"].tolist() == [0] and nms["queries"].tolist() == [0]  # the better one stays
    torch.testing.assert_close(nms["boxes"], plain["boxes"][:1])
    torch.testing.assert_close(nms["scores"], plain["scores"][:1])
    (loose,) = detections(outputs, ORIG, score_threshold=0.5, nms_iou=0.95)  # IoU ~0.9 is under 0.95
    assert len(loose["labels"]) == 2


def test_nms_is_class_aware():
    (det,) = detections(_two_boxes(second_class=1), ORIG, score_threshold=0.5, nms_iou=0.7)
    assert sorted(det["labels"].tolist()) == [0, 1]


def test_nms_runs_before_top_k_and_per_image():
    outputs = {k: torch.cat([v, v]) for k, v in _two_boxes(second_class=0).items()}
    outputs["pred_boxes"][1, 1] = torch.tensor([0.8, 0.8, 0.2, 0.2])  # image 2: apart, both kept
    first, second = detections(outputs, torch.cat([ORIG, ORIG]), top_k=2, nms_iou=0.7)
    # image 1: the duplicate is gone, so the third (no-object) query fills the second slot
    assert first["queries"].tolist() == [0, 2]
    assert second["queries"].tolist() == [0, 1]


def test_detr_carries_nms_iou_through_a_checkpoint(tmp_path):
    assert build_model("detr_demo", num_classes=3).nms_iou is None
    model = build_model("detr_demo", num_classes=3, img_size=64, nms_iou=0.7)
    assert model.nms_iou == 0.7 and model.build_config["nms_iou"] == 0.7
    meta = CheckpointMeta(model_name=model.name, task="detection", model_config=dict(model.build_config),
                          class_names=["a", "b", "c"], image_size=64, patch_size=16)
    save_checkpoint(tmp_path / "ckpt", model.state_dict(), meta)
    state, meta = load_checkpoint(tmp_path / "ckpt")
    rebuilt = build_model(meta.model_name, **meta.model_config)
    load_weights(rebuilt, state)
    assert rebuilt.nms_iou == 0.7


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_detr_refuses_an_iou_outside_0_1(bad):
    with pytest.raises(ValueError, match="nms_iou"):
        build_model("detr_demo", num_classes=3, nms_iou=bad)


def test_cli_explain_uses_the_models_nms(tmp_path, capsys):
    """``vitpipe explain`` on a YOLOS checkpoint with ``nms_iou``: each explained detection is
    the query NMS kept, with that query's box."""
    import json

    import numpy as np
    from PIL import Image

    from components.cli.main import main
    from components.data.image_io import preprocess
    from components.models.attention import attention_maps

    torch.manual_seed(0)
    model = build_model("yolos_demo", num_classes=3, img_size=64, nms_iou=0.3).eval()
    meta = CheckpointMeta(model_name="yolos_demo", task="detection", model_config=dict(model.build_config),
                          class_names=["a", "b", "c"], image_size=64, patch_size=16)
    ckpt = save_checkpoint(tmp_path / "ckpt", model.state_dict(), meta)
    rgb = np.random.default_rng(0).integers(0, 256, (80, 120, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "img.png")
    patches, grid = preprocess(rgb, image_size=64, patch_size=16)
    outputs, _ = attention_maps(model, torch.from_numpy(patches)[None], grid)
    orig = torch.tensor([[80, 120]])
    (plain,) = detections(outputs, orig, top_k=model.num_det_tokens)
    (want,) = detections(outputs, orig, top_k=model.num_det_tokens, nms_iou=0.3)
    assert len(want["queries"]) < len(plain["queries"])  # untrained [DET] boxes overlap

    rc = main(["explain", "--checkpoint", str(ckpt), "--image", str(tmp_path / "img.png"),
               "--out", str(tmp_path / "out"), "--top", str(model.num_det_tokens)])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "explain.json").read_text())
    assert [d["query"] for d in report["detections"]] == want["queries"].tolist()
    for d, box in zip(report["detections"], want["boxes"]):
        assert d["box_xyxy"] == pytest.approx(box.tolist(), abs=1e-3)
