"""The task objects: the registry, the model.overrides check on the driver, fixed loss
weights totalled by one function, and the questions the stages ask instead of names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from components.core.config import ConfigError
from components.models import build_model
from components.models.criterion import total_loss
from components.tasks import TASKS, get_task
from components.training.config import load_train_config

CONFIGS = Path(__file__).resolve().parents[2] / "pipelines" / "configs"
torch.set_num_threads(1)


def test_registry_names_every_task_and_refuses_others():
    assert set(TASKS) == {"classification", "detection", "mae"}
    for name in TASKS:
        assert get_task(name).name == name
    with pytest.raises(ValueError, match="unknown task 'segmentation'; known: classification"):
        get_task("segmentation")


@pytest.mark.parametrize("config, key, names", [
    ("detect_ci.yaml", "dept", ["depth", "num_det_tokens"]),  # a builder with named keywords
    ("pretrain_ci.yaml", "dept", ["stem", "norm_eps"]),  # timm: dry-built on the meta device
    ("pretrain_mae_ci.yaml", "embed_dimm", ["stem"]),
])
def test_an_override_typo_fails_before_any_worker_naming_the_accepted_keys(config, key, names):
    with pytest.raises(ConfigError) as err:
        load_train_config(CONFIGS / config, [f"model.overrides.{key}=3"])
    message = str(err.value)
    assert f"'{key}' not accepted" in message and all(n in message for n in names), message


def test_valid_overrides_pass():
    assert load_train_config(CONFIGS / "detect_ci.yaml", ["model.overrides.depth=2"]).model.overrides == {"depth": 2}
    assert load_train_config(CONFIGS / "pretrain_ci.yaml", ["model.overrides.depth=2"]).model.overrides == {"depth": 2}


def test_detection_weights_are_fixed_and_aux_terms_use_their_base_weight():
    cfg = load_train_config(CONFIGS / "detect_ci.yaml", ["model.name=detr_demo", "data.image_size=64"])
    task = get_task(cfg.task)
    torch.manual_seed(0)
    model = task.build_model(cfg, num_classes=3, image_size=64)
    loss_fn = task.loss(cfg, num_classes=3, model=model)
    before = dict(loss_fn.weight_dict)
    batch = {"patches": torch.randint(0, 256, (2, 16, 768), dtype=torch.uint8), "grid": torch.tensor([[4, 4]] * 2),
             "boxes": torch.tensor([[[0.3, 0.3, 0.2, 0.2]]] * 2), "classes": torch.tensor([[1]] * 2),
             "box_mask": torch.ones(2, 1, dtype=torch.bool)}
    with torch.no_grad():
        losses = loss_fn(model, batch)
    assert loss_fn.weight_dict == before == {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    assert "loss_ce_0" in losses
    expected = sum(v * before[k.rstrip("_0123456789") if k[-1].isdigit() else k] for k, v in losses.items())
    torch.testing.assert_close(total_loss(losses, loss_fn.weight_dict), expected)
    val = task.validate(model, [batch], loss_fn=loss_fn, device=torch.device("cpu"), amp_dtype=None)
    assert set(val) == {"val_loss"} and val["val_loss"] > 0


def test_what_the_stages_ask():
    cls, det, mae = (get_task(n) for n in ("classification", "detection", "mae"))
    assert (cls.metric, cls.direction, cls.val_metric, cls.val_direction) == ("top1", "max", "val_top1", "max")
    assert (det.metric, det.direction, det.val_metric) == ("map", "max", "val_loss")
    assert (mae.model_task, mae.registers, mae.evaluates) == ("classification", False, False)
    assert mae.loader_kind("voc") == "detection" and mae.loader_kind("imagefolder") == "classification"
    assert det.checkpoint_ranking("val_top1", "max") == ("val_loss", "min")
    assert cls.better(0.9, 0.8) and not get_task("mae").better(0.9, 0.8)
    model = build_model("vit_demo", num_classes=3, img_size=32).eval()
    with torch.no_grad():
        logits = model(torch.randint(0, 256, (2, 4, 768), dtype=torch.uint8), (2, 2))
    (row, _) = cls.postprocess(logits, model=model, orig_hw=torch.tensor([[32, 32]] * 2),
                               score_threshold=0.0, max_detections=5)
    assert row["probabilities"].shape == (3,) and abs(float(row["probabilities"].sum()) - 1) < 1e-5
    assert [o["name"] for o in det.output_specs(num_classes=3, top_k=2, max_detections=4)] == [
        "boxes", "scores", "labels", "num_detections"]
