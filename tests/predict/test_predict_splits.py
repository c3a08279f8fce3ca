"""Labelled splits: predictions scored with the training evaluator, models from the registry.

The expected metrics come from the evaluation path training uses: the data layer's eval
dataset (``build_dataset(..., training=False)``) through ``components.evaluation``.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest

from components.data.config import DataConfig
from components.data.dataset import build_dataset
from components.data.loader import iter_batches
from components.tracking.packaging import model_from_checkpoint
from components.evaluation import (coco_metrics, evaluate_classification,
                                          predict_detections)
from tests.predict.conftest import run_cli


@pytest.mark.slow
def test_registry_alias_on_a_labelled_split(ray_cluster, mlflow_uri, synth_dataset,
                                            classifier_ckpt, tmp_path, capsys):
    from components.tracking.promotion import set_alias
    from components.tracking.registry import register_checkpoint

    name = f"predict-{uuid.uuid4().hex[:8]}"
    version = register_checkpoint(classifier_ckpt, task="classification",
                                  registered_name=name, tracking_uri=mlflow_uri)
    set_alias(name, version, "champion", tracking_uri=mlflow_uri, cache_dir=tmp_path / "cache")

    out = tmp_path / "out"
    code, summary, err = run_cli(
        capsys, f"model=models:/{name}@champion", "input.data.format=imagefolder",
        f"input.data.root={synth_dataset}", "input.split=val", f"output={out}",
        f"cache_dir={tmp_path / 'cache'}")
    assert code == 0, err

    model, meta = model_from_checkpoint(classifier_ckpt)
    cfg = DataConfig(format="imagefolder", root=str(synth_dataset), image_size=meta.image_size,
                     class_names=list(meta.class_names))
    bundle = build_dataset(cfg, "val", training=False)
    expected = evaluate_classification(
        model, iter_batches(bundle.dataset, batch_size=16, task="classification", device="cpu"),
        device="cpu", num_classes=len(meta.class_names))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["confusion"] == expected["confusion"]
    assert metrics["top1"] == pytest.approx(expected["top1"])
    assert metrics["top5"] == pytest.approx(expected["top5"])
    assert summary["metrics"]["top1"] == pytest.approx(expected["top1"], abs=1e-6)
    assert summary["images"] == bundle.num_rows and summary["skipped"] == 0

    table = pq.read_table(out / "predictions.parquet")
    assert table.num_rows == bundle.num_rows
    assert set(table.column("model_uri").to_pylist()) == {f"models:/{name}/{version}"}
    assert set(table.column("model_version").to_pylist()) == {version}
    # The data layer's fingerprint of the split as read without decoding every image first
    listed = build_dataset(cfg.model_copy(update={"validate_images": False}), "val", training=False)
    assert set(table.column("data_fingerprint").to_pylist()) == {listed.fingerprint}
    assert "logits" not in table.column_names  # used for the metrics, not written

    code, _, err = run_cli(capsys, f"model=models:/{name}@nobody", f"input.path={synth_dataset}",
                           f"output={out}")
    assert code == 2 and "no alias @nobody" in err


@pytest.mark.slow
def test_detector_on_a_coco_split(ray_cluster, synth_dataset, detector_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    code, summary, err = run_cli(
        capsys, f"model={detector_ckpt}", "input.data.format=coco",
        f"input.data.root={synth_dataset}", "input.split=val", f"output={out}")
    assert code == 0, err

    model, meta = model_from_checkpoint(detector_ckpt)
    bundle = build_dataset(DataConfig(root=str(synth_dataset), image_size=meta.image_size,
                                      class_names=list(meta.class_names)), "val", training=False)
    expected = predict_detections(
        model, iter_batches(bundle.dataset, batch_size=8, task="detection", device="cpu"),
        bundle.coco_gt, device="cpu")
    got = json.loads((out / "coco_results.json").read_text())
    assert summary["outputs"]["coco_results"] == str(out / "coco_results.json")
    assert len(got) == len(expected.results) > 0

    def by_image(results):
        grouped = defaultdict(list)
        for r in results:
            grouped[r["image_id"]].append(r)
        return grouped

    want = by_image(expected.results)
    for image_id, results in by_image(got).items():
        assert [r["category_id"] for r in results] == [r["category_id"] for r in want[image_id]]
        np.testing.assert_allclose([r["bbox"] for r in results],
                                   [r["bbox"] for r in want[image_id]], atol=0.05)
        np.testing.assert_allclose([r["score"] for r in results],
                                   [r["score"] for r in want[image_id]], rtol=1e-4, atol=1e-5)

    reference = coco_metrics(expected.results, bundle.coco_gt, image_ids=expected.image_ids)
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("map", "map50", "map75", "mar100"):
        assert metrics[key] == pytest.approx(reference[key], abs=1e-4), key
    assert metrics["num_images"] == bundle.num_rows

    table = pq.read_table(out / "predictions.parquet")
    assert table.num_rows == bundle.num_rows
    for row in table.to_pylist():
        boxes = np.asarray(row["boxes"]).reshape(-1, 4)
        assert len(boxes) == len(row["scores"]) == len(row["labels"]) <= 100
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= row["width"]).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= row["height"]).all()
        assert set(row["labels"]) <= set(meta.class_names)


@pytest.mark.slow
def test_detector_on_real_voc_photographs(ray_cluster, tmp_path, capsys):
    """Four BCCD photographs (640×480 JPEG, Pascal VOC): decoded at a reduced scale for the
    64-px model, answered in original pixels, scored against the VOC ground truth."""
    from tests.data.conftest import copy_bccd
    from tests.predict.conftest import perturbed_checkpoint

    root = copy_bccd(tmp_path / "data", {"val": 4})
    ckpt = perturbed_checkpoint(tmp_path / "ckpt", model_name="yolos_demo",
                                class_names=["Platelets", "RBC", "WBC"], seed=9)
    out = tmp_path / "out"
    code, summary, err = run_cli(capsys, f"model={ckpt}", "input.data.format=voc",
                                 f"input.data.root={root}", "input.split=val", f"output={out}")
    assert code == 0, err
    assert summary["images"] == 4 and summary["skipped"] == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 4 and 0.0 <= metrics["map"] <= 1.0
    table = pq.read_table(out / "predictions.parquet").to_pylist()
    assert {(r["height"], r["width"]) for r in table} == {(480, 640)}
    boxes = np.concatenate([np.asarray(r["boxes"]).reshape(-1, 4) for r in table])
    assert len(boxes) and boxes[:, 2].max() > 64 and boxes[:, 2].max() <= 640  # original pixels
    results = json.loads((out / "coco_results.json").read_text())
    assert len(results) == len(boxes)
