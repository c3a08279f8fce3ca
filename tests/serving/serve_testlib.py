"""Helpers shared by the serving tests (a uniquely named module: tests have no packages)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import torch

from components.core.checkpoint import CheckpointMeta, save_checkpoint

CLASS_NAMES = ["circle", "square", "triangle"]
TOKEN = "test-token-7f3a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLASSIFIER = "serving-test-classifier"  # own names: the MLflow server is shared
DETECTOR = "serving-test-detector"


def make_checkpoint(directory: Path, model_name: str, task: str, seed: int) -> Path:
    from components.models import build_model

    torch.manual_seed(seed)
    model = build_model(model_name, num_classes=len(CLASS_NAMES))
    with torch.no_grad():  # zero-initialised heads would make every answer identical
        for param in model.parameters():
            if not param.abs().sum():
                param.normal_(0.0, 0.5)
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


def encode(image: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def deploy(registered, cache_dir, model_uri_override: str | None = None, detector_uri: str | None = None,
           **model_settings) -> None:
    """Deploy ``pipelines/configs/serve.yaml`` (edited for this test run) as ``serve deploy``
    would: through the controller's config path, so ``user_config`` edits retune live.

    (``serve deploy`` itself talks to the dashboard, which the session cluster runs without.)
    """
    from ray.serve.context import _get_global_client

    from components.serving.config_file import deploy_schema, load_config
    from components.serving.settings import TOKEN_ENV

    schema = deploy_schema(
        load_config(),
        model_uris={"classifier": model_uri_override or f"models:/{CLASSIFIER}@champion",
                    "detector": detector_uri or f"models:/{DETECTOR}@champion"},
        model_settings={"poll_interval_s": 0.5, "cache_dir": str(cache_dir), "max_batch_size": 8,
                        "batch_wait_timeout_s": 0.01, "score_threshold": 0.0, **model_settings},
        ingress_settings={"max_body_bytes": 300_000, "max_pixels": 1_000_000},
        env_vars={"MLFLOW_TRACKING_URI": registered["tracking_uri"], TOKEN_ENV: TOKEN},
        num_cpus=0.5, num_replicas=1,
    )
    _get_global_client().deploy_apps(schema)  # callers wait for what they need


def wait_healthy(url: str, timeout_s: float = 300.0) -> None:
    """Poll ``GET /healthz`` until 200 (replicas import torch & co: slow on a busy box)."""
    import requests

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=30).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the serving app at {url} did not become healthy in {timeout_s:.0f} s")
        time.sleep(0.5)
