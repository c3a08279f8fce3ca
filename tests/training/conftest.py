"""Fixtures for the training tests: tiny configs on the session's synthetic dataset."""

from __future__ import annotations

from pathlib import Path

import pytest


def tiny_overrides(synth: Path, storage: Path, *, task: str = "classification", **extra) -> list[str]:
    """Overrides that make a run small enough for a 2-core CI machine."""
    if task == "classification":
        base = [f"data.root={synth}", "data.format=imagefolder", "data.image_size=64",
                "model.name=vit_demo", "batch_size=8"]
    else:
        base = [f"data.root={synth}", "data.format=coco", "data.image_size=96",
                "model.name=yolos_demo", "batch_size=8", "task=detection"]
    base += [f"run.storage_path={storage}", "scaling.num_workers=1", "data.validate_images=false"]
    base += [f"{k}={v}" for k, v in extra.items()]
    return base


@pytest.fixture()
def storage_dir(tmp_path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path
