"""The RayService carries pipelines/configs/serve.yaml, and Ray Serve's schema accepts it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from k8s_helpers import K8S, ROOT, by_kind


# --- Serve config ------------------------------------------------------------------------

def test_rayservice_embeds_serve_yaml_verbatim():
    proc = subprocess.run(
        [sys.executable, str(K8S / "sync_serve_config.py"), "--check"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    service = yaml.safe_load((K8S / "base" / "rayservice.yaml").read_text())
    serve_yaml = (ROOT / "pipelines" / "configs" / "serve.yaml").read_text()
    assert service["spec"]["serveConfigV2"].rstrip("\n") == serve_yaml.rstrip("\n")


def _validate_serve_config(text: str):
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load(text))
    assert config.applications, "the Serve config deploys no application"
    return config


def test_serve_config_validates_with_ray_serve_schema(overlay):
    name, _, docs = overlay
    (service,) = by_kind(docs, "RayService")
    config = _validate_serve_config(service["spec"]["serveConfigV2"])
    model_deployments = [
        d for app in config.applications for d in (app.deployments or [])
        if isinstance(d.user_config, dict) and "model_uri" in d.user_config
    ]
    assert model_deployments, f"{name}: no deployment loads a model"
    gpus = {(d.ray_actor_options.num_gpus or 0) if d.ray_actor_options else 0 for d in model_deployments}
    if name == "gpu-prod":
        assert gpus == {1}, "gpu-prod model replicas must each reserve a GPU"
    else:
        assert gpus == {0}, f"{name} has no GPUs, yet a model replica asks for one"


def test_serve_config_rejects_unknown_fields():
    """Ray Serve's own schema is strict enough to catch a typo in serve.yaml."""
    from pydantic import ValidationError

    config = yaml.safe_load((ROOT / "pipelines" / "configs" / "serve.yaml").read_text())
    config["applications"][0]["import_pth"] = config["applications"][0].pop("import_path")
    with pytest.raises(ValidationError):
        _validate_serve_config(yaml.safe_dump(config))
