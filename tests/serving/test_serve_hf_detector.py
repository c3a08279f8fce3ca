"""End to end with a transformers detector (RT-DETRv2, ``pipelines/configs/detect_hf_ci.yaml``):
trained by Ray Train with the library's losses, evaluated (COCO mAP), registered in the real
MLflow server, promoted by the gate (which re-measures it: same postprocessing, same mAP),
and served by the Serve application on /v1/detect and the v2 protocol."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import requests

from components.tracking.server import free_port

from components.data.synth import CLASS_NAMES
from serve_testlib import AUTH, deploy, encode, wait_healthy

CONFIGS = Path(__file__).resolve().parents[2] / "pipelines" / "configs"
HF_DETECTOR = "serving-test-hf-detector"  # own name: the MLflow server is shared


@pytest.fixture(scope="module")
def trained(ray_cluster, mlflow_server, synth_dataset, tmp_path_factory):
    from components.training.config import load_train_config
    from components.training.trainer import run_training

    storage = tmp_path_factory.mktemp("hf-detect")
    cfg = load_train_config(CONFIGS / "detect_hf_ci.yaml", [
        f"data.root={synth_dataset}", f"run.storage_path={storage}", "mlflow.enabled=true",
        f"mlflow.tracking_uri={mlflow_server.uri}", "mlflow.experiment=serving-hf-detector",
        "registry.enabled=true", f"registry.registered_name={HF_DETECTOR}"])
    return run_training(cfg)


@pytest.mark.slow
def test_hf_detector_trains_registers_promotes_and_serves(trained, registered, synth_dataset, tmp_path,
                                                          sample_image):
    from mlflow import MlflowClient
    from ray import serve

    from components.data.config import DataConfig
    from components.tracking.promotion import PromoteConfig, promote

    uri = registered["tracking_uri"]
    assert trained["registered_version"] == "1"
    assert trained["steps"] >= 5
    assert math.isfinite(trained["metrics"]["map"]) and 0 <= trained["metrics"]["map50"] <= 1
    run = MlflowClient(uri).get_run(trained["mlflow_run_id"])
    assert "train_loss_total" in run.data.metrics and "train_loss_vfl" in run.data.metrics  # the library's terms

    data = DataConfig(format="coco", root=str(synth_dataset), validate_images=False)
    result = promote(PromoteConfig(task="detection", model=HF_DETECTOR, data=data, tracking_uri=uri,
                                   cache_dir=str(tmp_path / "gate-cache")))
    assert result.decision == "first" and result.alias_set == "champion"
    # the gate re-measures the registered checkpoint on the same split with the same postprocessing
    assert result.candidate_score == pytest.approx(trained["metrics"]["map"], abs=1e-6)

    serve.start(http_options={"host": "127.0.0.1", "port": (port := free_port())})
    try:
        deploy(registered, tmp_path / "serve-cache", detector_uri_override=f"models:/{HF_DETECTOR}@champion")
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url)
        r = requests.post(f"{url}/v1/detect", data=encode(sample_image),
                          headers={**AUTH, "Content-Type": "image/png"}, timeout=120)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == {"name": HF_DETECTOR, "version": "1"}
        dets = body["detections"]
        assert dets, "at score_threshold 0 the top (query, class) pairs are returned"
        for det in dets:
            x1, y1, x2, y2 = det["box"]
            assert 0 <= x1 <= x2 <= 120 and 0 <= y1 <= y2 <= 80
            assert det["label"] == CLASS_NAMES[det["class_id"]]  # COCO ids 1.. in CLASS_NAMES order
            assert 0 <= det["score"] <= 1
        scores = [d["score"] for d in dets]
        assert scores == sorted(scores, reverse=True)
        v2 = requests.post(f"{url}/v2/models/detector/infer", headers=AUTH, timeout=120, json={
            "inputs": [{"name": "image", "shape": [1, 80, 120, 3], "datatype": "UINT8",
                        "data": sample_image.reshape(-1).tolist()}]})
        assert v2.status_code == 200, v2.text
        outputs = {o["name"]: o for o in v2.json()["outputs"]}
        count = int(outputs["num_detections"]["data"][0])
        assert count > 0
        boxes = np.asarray(outputs["boxes"]["data"], np.float32).reshape(outputs["boxes"]["shape"])[0, :count]
        assert (boxes[:, 2] <= 120).all() and (boxes[:, 3] <= 80).all()
    finally:
        serve.shutdown()
