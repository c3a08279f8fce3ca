"""Batch inference scores detections as Serve and the evaluator do: the model's own class
scores (softmax with a no-object class, or per-class sigmoid) and its NMS."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.mark.parametrize("name", ["rtdetr_v2_demo", "detr_demo"])
def test_detection_columns_follow_the_models_class_scores(name):
    from components.core.checkpoint import CheckpointMeta
    from components.models import build_model
    from components.predict.outputs import DetectionOutputs
    from components.tasks import get_task

    classes = ["a", "b", "c"]
    model = build_model(name, num_classes=len(classes), img_size=64).eval()
    torch.manual_seed(0)
    with torch.inference_mode():
        raw = model(torch.randint(0, 256, (2, 16, 768), dtype=torch.uint8), (4, 4))
    outputs = {k: raw[k].float() for k in ("pred_logits", "pred_boxes")}
    # Sigmoid detectors have one logit per class, softmax ones a no-object column more.
    sigmoid = getattr(model, "class_scores", "softmax") == "sigmoid"
    assert outputs["pred_logits"].shape[-1] == len(classes) + (0 if sigmoid else 1)
    orig = torch.tensor([[480, 640], [64, 64]])
    meta = CheckpointMeta(model_name=name, task="detection", model_config={}, class_names=classes,
                          image_size=64, patch_size=16, mean=(0.0,) * 3, std=(1.0,) * 3)
    cols = DetectionOutputs(meta, model=model, score_threshold=0.0, max_detections=20).columns(outputs, orig)
    served = get_task("detection").postprocess(outputs, model=model, orig_hw=orig,
                                               score_threshold=0.0, max_detections=20)
    for i, det in enumerate(served):
        np.testing.assert_allclose(cols["scores"][i], det["scores"], rtol=1e-6)
        np.testing.assert_allclose(np.asarray(cols["boxes"][i]).reshape(-1, 4), det["boxes"], rtol=1e-6)
        assert cols["label_ids"][i] == det["labels"].tolist()
        assert cols["labels"][i] == [classes[j] for j in det["labels"]]
    if sigmoid:  # per-class sigmoid scores: every class can be predicted, scores within (0, 1)
        first = np.asarray(cols["scores"][0])
        expected = torch.sigmoid(outputs["pred_logits"][0]).flatten().topk(len(first)).values
        np.testing.assert_allclose(first, expected.numpy(), rtol=1e-5)
