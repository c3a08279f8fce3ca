"""``detect_bccd.yaml`` builds a model that takes the patches its data section makes."""

from __future__ import annotations

from pathlib import Path

from components.tasks import get_task
from components.training.config import load_train_config

CONFIGS = Path(__file__).resolve().parents[2] / "pipelines" / "configs"


def test_the_bccd_detector_reads_the_data_sections_patch_size():
    cfg = load_train_config(CONFIGS / "detect_bccd.yaml", [])
    model = get_task(cfg.task).build_model(cfg, num_classes=3, image_size=cfg.data.image_size)
    # the model rejects patches of any other size at its first forward (normalize_patches)
    assert int(model.patch_size) == cfg.data.patch_size
