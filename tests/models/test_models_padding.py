"""Detectors on letterboxed, non-square images: training steps run with padding masks and
multi-scale batches, and a mask-taking detector answers the same for the same image whatever
the padding around it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.data.letterbox import rescale_batch
from components.data.loader import collate_numpy
from components.data.patchify import patchify
from components.data.transforms import ImageTransform
from components.models import build_model
from components.training.config import OptimSection, TrainConfig
from components.tasks import get_task
from components.training.optim import build_optimizer, build_scheduler
from components.training.step import StepRunner

PATCH = 16


@pytest.fixture()
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def letterboxed_batch(sizes_hw, target: int, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Painted rectangles on grey images of ``sizes_hw``, letterboxed to ``target``."""
    rng = np.random.default_rng(seed)
    transform = ImageTransform(task="detection", training=False, image_size=target,
                               letterbox=True, patch_size=PATCH)
    rows = {k: [] for k in ("patches", "grid", "boxes", "classes", "box_mask", "image_id",
                            "orig_size", "valid_hw")}
    for i, (h, w) in enumerate(sizes_hw):
        image = np.full((h, w, 3), 90, np.uint8)
        x, y = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        bw, bh = w // 3, h // 3
        image[y:y + bh, x:x + bw] = (230, 40, 40)
        canvas, boxes, classes, valid = transform.letterboxed(
            image, np.array([[x, y, bw, bh]], np.float32), np.array([i % 2]))
        patches, grid = patchify(canvas, PATCH)
        rows["patches"].append(patches)
        rows["grid"].append(grid)
        rows["boxes"].append(boxes)
        rows["classes"].append(classes)
        rows["box_mask"].append([True])
        rows["image_id"].append(i)
        rows["orig_size"].append((h, w))
        rows["valid_hw"].append(valid)
    return collate_numpy({k: np.asarray(v) for k, v in rows.items()}, "detection")


@pytest.mark.parametrize("name", ["detr_demo", "rtdetr_v2_demo"])
def test_detector_trains_on_letterboxed_multiscale_batches(name, one_thread):
    torch.manual_seed(0)
    batch = letterboxed_batch([(48, 80), (90, 40)], target=96)
    assert batch["valid_hw"].tolist() == [[58, 96], [96, 43]]
    model = build_model(name, num_classes=2, img_size=96)
    cfg = TrainConfig.model_validate({"task": "detection", "data": {"root": "unused"}, "model": {"name": name}})
    optim = OptimSection(lr=1e-3, weight_decay=0.0, warmup_steps=1, schedule="constant")
    optimizer = build_optimizer(model, optim)
    runner = StepRunner(model=model, optimizer=optimizer, scheduler=build_scheduler(optimizer, optim, 4),
                        loss_fn=get_task(cfg.task).loss(cfg, num_classes=2, model=model), device=torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for step, target in enumerate((96, 64, 128)):  # three canvas sizes, one model
        out = runner.micro_step(rescale_batch(batch, target, PATCH), step=step)
        assert torch.isfinite(torch.as_tensor(out["loss"])).all()
    changed = sum(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert changed > 0


def test_detr_answer_does_not_depend_on_the_padding(one_thread):
    """The same 48x80 picture letterboxed at 80 into canvases of 80, 128 and 176 pixels:
    DETR's detections agree (masked attention, sine encoding over the valid extent, zeroed
    padding); without the mask they do not."""
    from components.data.letterbox import canvas_side

    torch.manual_seed(0)
    model = build_model("detr_demo", num_classes=2, img_size=80).eval()
    base = letterboxed_batch([(48, 80)], target=80)
    outputs, unmasked = [], []
    for side in (80, 128, 176):
        images = torch.zeros((1, side, side, 3), dtype=torch.uint8)
        images[0, :80, :80] = torch.from_numpy(
            base["patches"][0].reshape(5, 5, PATCH, PATCH, 3).permute(0, 2, 1, 3, 4)
            .reshape(80, 80, 3).numpy())
        patches, grid = patchify(images, PATCH)
        assert canvas_side(side, PATCH) == side
        with torch.no_grad():
            outputs.append(model(patches, grid, valid_hw=base["valid_hw"]))
            unmasked.append(model(patches, grid))
    for other in outputs[1:]:
        assert torch.allclose(other["pred_boxes"], outputs[0]["pred_boxes"], atol=1e-4)
        assert torch.allclose(other["pred_logits"], outputs[0]["pred_logits"], atol=1e-4)
    assert not torch.allclose(unmasked[2]["pred_boxes"], unmasked[0]["pred_boxes"], atol=1e-4)


def test_hf_detector_takes_the_pixel_mask(one_thread):
    """RT-DETRv2 receives the letterbox padding as ``pixel_mask`` (1 = image)."""
    torch.manual_seed(0)
    model = build_model("rtdetr_v2_demo", num_classes=2, img_size=96).eval()
    batch = letterboxed_batch([(48, 80)], target=96)
    seen = {}
    hook = model.hf.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.update(mask=kwargs.get("pixel_mask")), with_kwargs=True)
    with torch.no_grad():
        model(batch["patches"], batch["grid"], valid_hw=batch["valid_hw"])
    hook.remove()
    mask = seen["mask"]
    assert mask.shape == (1, 96, 96)
    assert mask[0, :58, :96].all() and not mask[0, 58:].any()
