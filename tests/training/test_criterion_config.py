"""The ``criterion`` section of the training config reaches the detectors' set criterion."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from components.core.config import ConfigError
from components.models import build_model
from components.models.criterion import build_criterion
from components.training.config import load_train_config
from components.tasks import get_task
from components.tasks.losses import detection_loss

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parents[2] / "pipelines" / "configs"


def test_defaults_are_detrs():
    cfg = load_train_config(CONFIGS / "detect_ci.yaml")
    assert cfg.criterion.model_dump() == {"class_weight": 1.0, "bbox_weight": 5.0, "giou_weight": 2.0,
                                          "eos_coef": 0.1, "match_repeats": 1}


def test_make_loss_passes_the_section():
    cfg = load_train_config(CONFIGS / "detect_ci.yaml", ["criterion.match_repeats=3", "criterion.bbox_weight=4",
                                                         "criterion.eos_coef=0.2"])
    loss_fn = get_task(cfg.task).loss(cfg, num_classes=3)
    assert loss_fn.weight_dict == {"loss_ce": 1.0, "loss_bbox": 4.0, "loss_giou": 2.0}
    torch.manual_seed(0)
    model = build_model("detr_demo", num_classes=3, img_size=64).eval()
    batch = {"patches": torch.randint(0, 256, (2, 16, 768), dtype=torch.uint8), "grid": torch.tensor([[4, 4]] * 2),
             "boxes": torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]]] * 2),
             "classes": torch.tensor([[0, 2]] * 2), "box_mask": torch.ones(2, 2, dtype=torch.bool)}
    with torch.no_grad():
        got = loss_fn(model, batch)
        want = detection_loss(build_criterion(3, bbox_weight=4, eos_coef=0.2, match_repeats=3))(model, batch)
        one = detection_loss(build_criterion(3, bbox_weight=4, eos_coef=0.2))(model, batch)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert not torch.equal(got["loss_ce"], one["loss_ce"])  # three positives per box, not one


@pytest.mark.parametrize("override,where", [
    ("criterion.match_repeat=3", r"criterion\.match_repeat"),
    ("criterion.match_repeats=three", r"criterion\.match_repeats"),
    ("criterion.match_repeats=0", r"criterion\.match_repeats"),
    ("criterion.eos_coef=0", r"criterion\.eos_coef"),
    ("criterion.giou_weight=-1", r"criterion\.giou_weight"),
])
def test_mistakes_are_named(override, where):
    with pytest.raises(ConfigError, match=where):
        load_train_config(CONFIGS / "detect_ci.yaml", [override])


def test_all_zero_costs_are_refused():
    with pytest.raises(ConfigError, match="all 0"):
        load_train_config(CONFIGS / "detect_ci.yaml", ["criterion.class_weight=0", "criterion.bbox_weight=0",
                                                       "criterion.giou_weight=0"])
