"""Serving fixtures: tiny random-weight models registered in a real MLflow server, and the
Serve application running on the session Ray cluster on a free loopback port.

Bearer-token auth is ON in the served app (token in the ingress' runtime env), so every
request the tests make carries ``AUTH`` unless the test is about auth itself.
"""

from __future__ import annotations

import numpy as np
import pytest

from components.tracking.server import free_port

from serve_testlib import (
    CLASSIFIER, DETECTOR, deploy, make_checkpoint, set_champion, wait_healthy,
)


@pytest.fixture(scope="session")
def registered(mlflow_server, tmp_path_factory):
    """A classifier with versions 1 and 2 (champion = 1) and a detector (champion = 1)."""
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


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")  # Serve (and its pollers) stop when the module ends
def serve_url(ray_cluster, registered, model_cache):
    """The application on 127.0.0.1:<free port>; ``serve.shutdown()`` afterwards."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        deploy(registered, model_cache)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url)
        yield url
    finally:
        serve.shutdown()


@pytest.fixture(scope="session")
def sample_image() -> np.ndarray:
    """An RGB uint8 image 80x120 with a filled square (not the model's input size)."""
    image = np.full((80, 120, 3), 30, np.uint8)
    image[20:60, 40:90] = (220, 40, 40)
    return image
