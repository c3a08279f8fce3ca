"""Serving a letterboxed detector: a request's image goes through the same letterbox as the
val dataset, the replica passes the padding to the model, and the boxes come back in the
request image's pixels exactly as the evaluator maps them."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from components.core.checkpoint import CheckpointMeta
from components.models import build_model

PATCH = 16


def _png(h: int, w: int, seed: int) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = np.full((h, w, 3), 80, np.uint8)
    image[h // 4: h // 2, w // 3: w // 2] = (220, 30, 30)
    image += rng.integers(0, 20, image.shape, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue(), image


@pytest.mark.parametrize("hw", [(200, 300), (513, 97)])
def test_request_path_matches_the_evaluators_mapping(hw):
    from components.data.loader import collate_numpy
    from components.data.transforms import ImageTransform
    from components.data.patchify import patchify
    from components.models.postprocess import detection_settings, detections
    from components.serving.app import _decode_and_preprocess
    from components.serving.runtime import InferItem, LoadedModel

    torch.manual_seed(0)
    model = build_model("detr_demo", num_classes=2, img_size=96).eval()
    meta = CheckpointMeta(model_name="detr_demo", task="detection", model_config={},
                          class_names=["a", "b"], image_size=96, patch_size=PATCH,
                          extra={"letterbox": True})
    loaded = LoadedModel(model=model, meta=meta, name="det", version="1", alias=None,
                         uri="local", device=torch.device("cpu"), autocast=None)
    assert loaded.describe()["letterbox"] is True
    data, image = _png(*hw, seed=1)

    # the request path: bytes → letterboxed patches → a dynamic batch of one
    patches, orig_hw = _decode_and_preprocess(data, 40_000_000, 96, PATCH, True)
    assert tuple(orig_hw) == hw and patches.shape == ((96 // PATCH) ** 2, PATCH * PATCH * 3)
    item = InferItem(patches=patches, image_size=96, patch_size=PATCH, orig_hw=tuple(orig_hw))
    (served,) = loaded.run([item], top_k=5, score_threshold=0.0, max_detections=10)

    # the evaluation path: the val dataset's letterbox, the model with its mask, postprocess
    transform = ImageTransform(task="detection", training=False, image_size=96,
                               letterbox=True, patch_size=PATCH)
    canvas, _, _, valid = transform.letterboxed(image)
    np.testing.assert_array_equal(patchify(canvas, PATCH)[0], patches)
    assert loaded.valid_hw([item]).tolist() == [list(valid)]
    with torch.no_grad():
        out = model(torch.from_numpy(patches)[None], (6, 6), valid_hw=torch.tensor([valid]))
        unmasked = model(torch.from_numpy(patches)[None], (6, 6))
    (want,) = detections(out, torch.tensor([hw]), top_k=10, **detection_settings(model))
    torch.testing.assert_close(torch.from_numpy(served["boxes"]), want["boxes"])
    assert served["labels"].tolist() == want["labels"].tolist()
    assert not torch.allclose(out["pred_boxes"], unmasked["pred_boxes"])  # the mask mattered
    # boxes are in the request image's pixels: inside (w, h), not the canvas
    assert (served["boxes"][:, 2] <= hw[1] + 1e-3).all() and (served["boxes"][:, 3] <= hw[0] + 1e-3).all()


def test_models_not_trained_letterboxed_are_served_as_before():
    from components.serving.runtime import InferItem, LoadedModel

    model = build_model("detr_demo", num_classes=2, img_size=64).eval()
    meta = CheckpointMeta(model_name="detr_demo", task="detection", model_config={},
                          class_names=["a", "b"], image_size=64, patch_size=PATCH)
    loaded = LoadedModel(model=model, meta=meta, name="det", version="1", alias=None,
                         uri="local", device=torch.device("cpu"), autocast=None)
    item = InferItem(patches=np.zeros((16, 768), np.uint8), image_size=64, patch_size=PATCH,
                     orig_hw=(30, 50))
    assert not loaded.letterbox and loaded.valid_hw([item]) is None
    (got,) = loaded.run([item], top_k=5, score_threshold=0.0, max_detections=3)
    assert len(got["boxes"]) == 3


def test_pyfunc_letterboxes_for_a_letterboxed_detector():
    """The MLflow pyfunc's arrays path: images letterboxed and masked like serving's."""
    from components.data.transforms import letterbox_preprocess
    from components.tracking.packaging import predict_arrays

    torch.manual_seed(0)
    model = build_model("detr_demo", num_classes=2, img_size=64).eval()
    meta = CheckpointMeta(model_name="detr_demo", task="detection", model_config={},
                          class_names=["a", "b"], image_size=64, patch_size=PATCH,
                          extra={"letterbox": True})
    images = np.random.default_rng(0).integers(0, 256, (2, 30, 50, 3), dtype=np.uint8)
    got = predict_arrays(model, meta, images)
    patches, grid, valid = letterbox_preprocess(images[1], image_size=64, patch_size=PATCH)
    assert valid == (38, 64)
    with torch.no_grad():
        want = model(torch.from_numpy(patches)[None], grid, valid_hw=torch.tensor([valid]))
    np.testing.assert_allclose(got["pred_boxes"][1], want["pred_boxes"][0].numpy(), atol=1e-5)
