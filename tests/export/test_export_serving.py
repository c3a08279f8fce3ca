"""Serving an ONNX export: the real Serve app on the session Ray cluster answers through its
HTTP endpoints with ``runtime: onnx`` what it answered with the PyTorch checkpoint, after a
live switch of the model deployments' ``user_config`` (no restart)."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
import requests

from components.tracking.server import free_port

from serve_testlib import AUTH, deploy, encode, make_checkpoint, wait_healthy

PNG = {**AUTH, "content-type": "image/png"}


@pytest.fixture(scope="module")
def onnx_versions(mlflow_server, ray_cluster, tmp_path_factory):
    """A classifier and a detector registered (3 classes) and exported to ONNX with the CLI."""
    from components.cli.main import main
    from components.tracking.registry import register_checkpoint

    root = tmp_path_factory.mktemp("export-serving")
    uris = {"tracking_uri": mlflow_server.uri}
    for key, model_name, task, seed in (("classifier", "vit_demo", "classification", 21),
                                        ("detector", "yolos_demo", "detection", 22)):
        name = f"export-serve-{key}-{uuid.uuid4().hex[:8]}"
        version = register_checkpoint(make_checkpoint(root / key, model_name, task, seed),
                                      task=task, registered_name=name,
                                      tracking_uri=mlflow_server.uri)
        uri = f"models:/{name}/{version}"
        rc = main(["export", uri, "--format", "onnx", "--out", str(root / f"{key}-onnx"),
                   "--tracking-uri", mlflow_server.uri, "--synthetic-images", "4",
                   "--latency-runs", "2"])
        assert rc == 0
        uris[key] = uri
    return uris


def _answers(url: str, image: np.ndarray) -> tuple[dict, dict]:
    body = encode(image)
    cls = requests.post(f"{url}/v1/classify", data=body, headers=PNG, params={"top_k": 3}, timeout=60)
    det = requests.post(f"{url}/v1/detect", data=body, headers=PNG, timeout=60)
    assert cls.status_code == 200, cls.text
    assert det.status_code == 200, det.text
    return cls.json(), det.json()


def _wait_runtime(url: str, runtime: str, timeout_s: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        models = requests.get(f"{url}/v1/models", headers=AUTH, timeout=30).json()["models"]
        if all(m.get("runtime") == runtime for m in models.values()):
            return models
        if time.monotonic() > deadline:
            raise TimeoutError(f"the model deployments did not switch to {runtime}: {models}")
        time.sleep(0.5)


@pytest.mark.slow
def test_onnx_runtime_answers_like_pytorch(onnx_versions, tmp_path, sample_image_export):
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    settings = dict(model_uri_override=onnx_versions["classifier"],
                    detector_uri_override=onnx_versions["detector"], precision="fp32")
    try:
        deploy(onnx_versions, tmp_path / "cache", **settings)
        wait_healthy(url)
        torch_cls, torch_det = _answers(url, sample_image_export)
        _wait_runtime(url, "torch")

        deploy(onnx_versions, tmp_path / "cache", runtime="onnx", **settings)  # live user_config
        models = _wait_runtime(url, "onnx")
        assert all(m["precision"] == "float32" and m["device"] == "cpu" for m in models.values())
        onnx_cls, onnx_det = _answers(url, sample_image_export)

        assert onnx_cls["model"] == torch_cls["model"]  # the same registered version
        assert [p["class_id"] for p in onnx_cls["predictions"]] == \
            [p["class_id"] for p in torch_cls["predictions"]]
        for a, b in zip(onnx_cls["predictions"], torch_cls["predictions"]):
            assert abs(a["score"] - b["score"]) < 1e-4
        assert onnx_det["model"] == torch_det["model"]
        assert len(onnx_det["detections"]) == len(torch_det["detections"]) > 0
        for a, b in zip(onnx_det["detections"], torch_det["detections"]):
            assert a["class_id"] == b["class_id"] and abs(a["score"] - b["score"]) < 1e-4
            assert np.allclose(a["box"], b["box"], atol=0.05)  # pixels, rounded to 0.01

        # attention maps need the PyTorch ViT: a clear 400 from the ONNX runtime, not a 500
        r = requests.post(f"{url}/v1/classify", data=encode(sample_image_export), headers=PNG,
                          params={"attention": 1}, timeout=60)
        assert r.status_code == 400, r.text
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def sample_image_export() -> np.ndarray:
    """An RGB image 80x120 with a filled square and a circle-ish blob (not the model's size)."""
    image = np.full((80, 120, 3), 30, np.uint8)
    image[20:60, 40:90] = (220, 40, 40)
    image[5:25, 5:25] = (40, 200, 90)
    return image
