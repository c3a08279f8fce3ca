"""``python -m pipelines.predict`` over a folder and an s3:// prefix, on the session's Ray cluster.

Each Parquet row is checked against a direct forward pass of the same checkpoint on the
same image (``components.tracking.packaging.predict_arrays``: decode, eval transform, fp32);
bad images are skipped, counted and listed, never fatal.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from components.data.image_io import decode_image
from components.tracking.packaging import model_from_checkpoint, predict_arrays
from tests.predict.conftest import BAD_FILES, run_cli

COLUMNS = {"image_id", "file", "sha256", "height", "width", "label", "score", "top_labels",
           "top_ids", "top_scores", "model_uri", "model_name", "model_version", "data_fingerprint"}


@functools.lru_cache(maxsize=4)
def reference_model(checkpoint: Path):
    return model_from_checkpoint(checkpoint)


def expected_top(checkpoint: Path, data: bytes, k: int) -> tuple[list[int], np.ndarray]:
    """The top-``k`` class ids and probabilities of a direct fp32 forward pass on one image."""
    model, meta = reference_model(checkpoint)
    logits = torch.from_numpy(predict_arrays(model, meta, decode_image(data)[None]))
    scores, ids = logits.softmax(-1).topk(k)
    return ids[0].tolist(), scores[0].numpy()


@pytest.mark.slow
def test_folder_predictions_match_a_direct_forward_pass(ray_cluster, classifier_ckpt,
                                                         photo_folder, tmp_path, capsys):
    out = tmp_path / "out"
    code, summary, err = run_cli(capsys, f"model={classifier_ckpt}",
                                 f"input.path={photo_folder}", f"output={out}")
    assert code == 0, err
    assert summary["images"] == 20 and summary["skipped"] == len(BAD_FILES)
    assert summary["images_per_s"] > 0
    assert summary["outputs"]["predictions"] == str(out / "predictions.parquet")

    table = pq.read_table(out / "predictions.parquet")
    assert set(table.column_names) == COLUMNS and table.num_rows == 20
    rows = table.to_pylist()
    files = sorted(p for p in photo_folder.rglob("*.jpg") if p.parent.name != "bad")
    assert sorted(r["file"] for r in rows) == [str(p) for p in files]
    assert len({r["data_fingerprint"] for r in rows}) == 1
    for row in rows:
        data = Path(row["file"]).read_bytes()
        ids, scores = expected_top(classifier_ckpt, data, k=3)
        assert row["top_ids"] == ids, row["file"]
        np.testing.assert_allclose(row["top_scores"], scores, rtol=1e-4, atol=1e-5)
        assert row["label"] == row["top_labels"][0] and row["score"] == row["top_scores"][0]
        assert (row["height"], row["width"]) == decode_image(data).shape[:2]
        assert row["model_uri"] == str(classifier_ckpt) and row["model_version"] is None
        assert row["model_name"] == "vit_demo"
    assert len({tuple(r["top_ids"]) for r in rows}) > 1  # the images are told apart

    report = json.loads((out / "skipped.json").read_text())
    reasons = {s["file"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == set(BAD_FILES)
    for file, reason in BAD_FILES.items():
        assert reasons[file].startswith(reason), (file, reasons[file])
    assert report["counts"]["images_predicted"] == 20
    assert report["counts"]["images_skipped"] == len(BAD_FILES)


@pytest.mark.slow
def test_s3_prefix_in_and_out(ray_cluster, s3_server, classifier_ckpt, photo_folder, capsys):
    import boto3

    from components.data.fs import resolve

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="vitpipe-predict")
    uploaded = sorted(photo_folder.rglob("photo_0*.jpg"))[:6] + [photo_folder / "bad" / "corrupt.jpg"]
    for path in uploaded:
        s3.upload_file(str(path), "vitpipe-predict", f"in/{path.relative_to(photo_folder)}")
    code, summary, err = run_cli(capsys, f"model={classifier_ckpt}",
                                 "input.path=s3://vitpipe-predict/in",
                                 "output=s3://vitpipe-predict/out", "inference.batch_size=4")
    assert code == 0, err
    assert summary["images"] == 6 and summary["skipped"] == 1
    assert summary["outputs"]["predictions"] == "s3://vitpipe-predict/out/predictions.parquet"
    fs, path = resolve(summary["outputs"]["predictions"])
    table = pq.read_table(path, filesystem=fs)
    assert table.num_rows == 6
    assert all(f.startswith("s3://vitpipe-predict/in/") for f in table.column("file").to_pylist())
    by_name = {Path(r["file"]).name: r for r in table.to_pylist()}
    for path in uploaded[:-1]:
        ids, _ = expected_top(classifier_ckpt, path.read_bytes(), k=3)
        assert by_name[path.name]["top_ids"] == ids
    fs, path = resolve(summary["outputs"]["skipped"])
    with fs.open_input_stream(path) as f:
        report = json.loads(f.read())
    assert report["skipped"] == [{"file": "bad/corrupt.jpg", "reason": "not an image"}]


@pytest.mark.parametrize("overrides, message", [
    (["model=/nonexistent/ckpt", "input.path=/tmp"], "neither a models:/ URI nor a checkpoint"),
    (["model=/tmp", "input.path=/tmp", "input.data.format=imagefolder", "input.data.root=/tmp"],
     "exactly one of input.path"),
    (["model=/tmp", "input.path=/tmp", "inference.actors=0"], "inference.actors"),
    (["model=/tmp", "input.path=/tmp", "surprise=1"], "surprise"),
])
def test_bad_requests_are_one_line_and_exit_2(overrides, message, tmp_path, capsys):
    code, _, err = run_cli(capsys, f"output={tmp_path}", *overrides)
    assert code == 2
    assert err.startswith("predict: error:") and message in err
    assert "Traceback" not in err


def test_missing_input_folder_is_exit_2(classifier_ckpt, tmp_path, capsys):
    code, _, err = run_cli(capsys, f"model={classifier_ckpt}", f"input.path={tmp_path / 'nope'}",
                           f"output={tmp_path / 'out'}")
    assert code == 2 and "does not exist" in err and "Traceback" not in err


def test_a_pool_larger_than_the_cluster_is_refused(ray_cluster, classifier_ckpt, photo_folder,
                                                   tmp_path, capsys):
    """A pool that cannot start (or leaves no CPU to decode) is exit 2, not a hang."""
    import ray

    cpus = int(ray.cluster_resources()["CPU"])
    for overrides in ([f"inference.actors={cpus + 1}"],
                      [f"inference.actors={cpus}", "decode.num_cpus=0.5"]):
        code, _, err = run_cli(capsys, f"model={classifier_ckpt}", f"input.path={photo_folder}",
                               f"output={tmp_path / 'out'}", *overrides)
        assert code == 2 and "CPUs" in err and "Traceback" not in err, err
    assert not (tmp_path / "out" / "predictions.parquet").exists()
