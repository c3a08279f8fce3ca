"""Fixtures of the batch-inference tests: checkpoints with non-trivial weights, image folders.

A freshly built classifier has a zero-initialised head (every class scores alike), so the
checkpoints here perturb every weight: predictions then differ per image and class, and a
pipeline that mixed up rows or images would be caught.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from components.data.synth import CLASS_NAMES
from tests.data.conftest import encode, png_with_header_size
from tests.tracking.tracking_helpers import make_checkpoint

CONFIG = str(Path(__file__).resolve().parents[2] / "pipelines" / "configs" / "predict_ci.yaml")

# Bad files placed in the test folder, with the reason each must be skipped with.
BAD_FILES = {
    "bad/corrupt.jpg": "not an image",
    "bad/truncated.jpg": "truncated or corrupt image",
    "bad/bomb.png": "too many pixels",
    "bad/empty.png": "empty file",
    "notes.txt": "not an image file extension",
}


def run_cli(capsys, *overrides: str) -> tuple[int, dict | None, str]:
    """``python -m pipelines.predict`` with the CI config, in-process:
    (exit code, the summary line as JSON or None, stderr)."""
    from pipelines.predict import main

    code = main(["--config", CONFIG, *overrides])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, (json.loads(lines[-1]) if code == 0 else None), captured.err


def perturbed_checkpoint(directory: Path, *, model_name: str, class_names: list[str],
                         seed: int) -> Path:
    """A checkpoint of ``model_name`` whose every weight carries seeded noise."""
    from components.models import build_model

    torch.manual_seed(seed)
    model = build_model(model_name, num_classes=len(class_names))
    state = {k: (v + 0.05 * torch.randn_like(v)) if v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    return make_checkpoint(directory, seed=seed, model_name=model_name,
                           num_classes=len(class_names), class_names=list(class_names),
                           state_dict=state)


def coco_class_names(synth: Path, split: str = "val") -> list[str]:
    """The synthetic COCO split's category names in category-id order (the reader's)."""
    cats = json.loads((synth / "annotations" / f"instances_{split}.json").read_text())["categories"]
    return [c["name"] for c in sorted(cats, key=lambda c: c["id"])]


@pytest.fixture(scope="session")
def classifier_ckpt(tmp_path_factory) -> Path:
    return perturbed_checkpoint(tmp_path_factory.mktemp("predict") / "classifier",
                                model_name="vit_demo", class_names=list(CLASS_NAMES), seed=7)


@pytest.fixture(scope="session")
def detector_ckpt(tmp_path_factory, synth_dataset) -> Path:
    return perturbed_checkpoint(tmp_path_factory.mktemp("predict") / "detector",
                                model_name="yolos_demo",
                                class_names=coco_class_names(synth_dataset), seed=8)


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory, synth_dataset) -> Path:
    """20 good images in nested folders (synthetic crops of several sizes) + ``BAD_FILES``."""
    root = tmp_path_factory.mktemp("photos")
    crops = sorted((synth_dataset / "imagefolder" / "train").rglob("*.jpg"))[:20]
    assert len(crops) == 20
    for i, crop in enumerate(crops):
        target = root / f"set{i % 3}" / f"photo_{i:02d}.jpg"
        target.parent.mkdir(exist_ok=True)
        shutil.copy(crop, target)
    from PIL import Image

    (root / "bad").mkdir()
    good = encode(Image.fromarray(np.full((40, 60, 3), 128, np.uint8)), "JPEG")
    (root / "bad" / "corrupt.jpg").write_bytes(b"\x00garbage, not a picture" * 10)
    (root / "bad" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "bad" / "bomb.png").write_bytes(png_with_header_size(20_000, 20_000))
    (root / "bad" / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    return root
