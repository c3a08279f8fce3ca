"""Helpers of the registry tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path

import torch

from components.core.checkpoint import CheckpointMeta, save_checkpoint


def make_checkpoint(
    directory: Path, *, seed: int, model_name: str = "vit_demo", num_classes: int = 4,
    class_names: list[str] | None = None, metrics: dict | None = None,
    state_dict: dict | None = None,
) -> Path:
    """A checkpoint of ``model_name`` with seeded random weights (or ``state_dict``)."""
    from components.models import build_model

    torch.manual_seed(seed)
    model = build_model(model_name, num_classes=num_classes)
    meta = CheckpointMeta(
        model_name=model_name, task=model.task,
        model_config={"num_classes": num_classes},
        class_names=class_names or [f"class{i}" for i in range(num_classes)],
        image_size=int(model.img_size if isinstance(model.img_size, int) else model.img_size[0]),
        patch_size=int(model.patch_size), mean=tuple(model.mean), std=tuple(model.std),
        data_fingerprint=f"fp-{seed}", step=10 * seed, metrics=metrics or {"top1": 0.25},
    )
    return save_checkpoint(directory, state_dict or model.state_dict(), meta)
