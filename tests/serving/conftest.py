"""Serving fixtures: tiny random-weight models registered in a real MLflow server, and the
Serve application running on the session Ray cluster on a free loopback port.

Bearer-token auth is ON in the served app (token in the ingress' runtime env), so every
request the tests make carries ``AUTH`` unless the test is about auth itself.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from components.core.checkpoint import CheckpointMeta, save_checkpoint
from components.tracking.server import free_port

CLASS_NAMES = ["circle", "square", "triangle"]
TOKEN = "test-token-7f3a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLASSIFIER = "vitpipe-classifier"
DETECTOR = "vitpipe-detector"


def make_checkpoint(directory: Path, model_name: str, task: str, seed: int) -> Path:
    from components.models import build_model

    torch.manual_seed(seed)
    model = build_model(model_name, num_classes=len(CLASS_NAMES))
    meta = CheckpointMeta(
        model_name=model_name, task=task, model_config=dict(model.build_config),
        class_names=list(CLASS_NAMES), image_size=int(model.img_size),
        patch_size=int(model.patch_size), mean=model.mean, std=model.std,
        data_fingerprint=f"test-{seed}", step=seed,
    )
    return save_checkpoint(directory, model.state_dict(), meta)


def set_champion(tracking_uri: str, name: str, version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient(tracking_uri, registry_uri=tracking_uri).set_registered_model_alias(
        name, "champion", version)


@pytest.fixture(scope="session")
def registered(mlflow_server, tmp_path_factory):
    """Two classifier versions (champion = the first) and one detector version."""
    from components.tracking.registry import register_checkpoint

    root = tmp_path_factory.mktemp("serving-ckpt")
    uri = mlflow_server.uri
    versions = {}
    for key, model_name, task, name, seed in (
        ("classifier_v1", "vit_demo", "classification", CLASSIFIER, 1),
        ("classifier_v2", "vit_demo", "classification", CLASSIFIER, 2),
        ("detector_v1", "yolos_demo", "detection", DETECTOR, 3),
    ):
        ckpt = make_checkpoint(root / key, model_name, task, seed)
        versions[key] = register_checkpoint(ckpt, task=task, registered_name=name,
                                            tracking_uri=uri)
    set_champion(uri, CLASSIFIER, versions["classifier_v1"])
    set_champion(uri, DETECTOR, versions["detector_v1"])
    return {"tracking_uri": uri, **versions}


@pytest.fixture(scope="session")
def serve_url(ray_cluster, registered, tmp_path_factory):
    """The application on 127.0.0.1:<free port>; ``serve.shutdown()`` afterwards."""
    from ray import serve

    from components.serving.app import build_app
    from components.serving.settings import TOKEN_ENV

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_app({
        "classifier_uri": f"models:/{CLASSIFIER}@champion",
        "detector_uri": f"models:/{DETECTOR}@champion",
        "tracking_uri": registered["tracking_uri"],
        "model_settings": {
            "poll_interval_s": 0.5, "cache_dir": str(tmp_path_factory.mktemp("model-cache")),
            "max_batch_size": 8, "batch_wait_timeout_s": 0.01, "score_threshold": 0.0,
        },
        "ingress_settings": {"max_body_bytes": 300_000, "max_pixels": 1_000_000},
        "ingress_env": {TOKEN_ENV: TOKEN},
        "model_num_cpus": 0.5, "ingress_num_cpus": 0.5, "replicas": 1,
    })
    serve.run(app, name="vitpipe", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=10).status_code == 200:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("the serving app did not become healthy in 180 s")
        time.sleep(0.5)
    yield url
    serve.shutdown()


def encode(image: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="session")
def sample_image() -> np.ndarray:
    """An RGB uint8 image 80x120 with a filled square (not the model's input size)."""
    image = np.full((80, 120, 3), 30, np.uint8)
    image[20:60, 40:90] = (220, 40, 40)
    return image
