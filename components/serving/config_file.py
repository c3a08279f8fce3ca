"""The Serve config file: ``pipelines/configs/serve.yaml``, written by ``serve build``.

``write_serve_config`` runs ``serve build components.serving.app:app`` (the deployments'
options in code become the file), names the application ``vitpipe`` and writes the result;
``serve_colocated.yaml`` is the same for ``colocated_app`` (one deployment running the
models in its replicas); ``vitpipe serve build-config --check`` fails when a committed file
is out of date. The
platform's ``k8s/sync_serve_config.py`` embeds the file verbatim in the RayService.

``deploy_schema`` reads the file as a ``ServeDeploySchema`` with per-environment edits
(model URIs, tracking URI, token, resources), which is how tests deploy the same config.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

IMPORT_PATH = "components.serving.app:app"
COLOCATED_IMPORT_PATH = "components.serving.app:colocated_app"
APP_NAME = "vitpipe"
REPO_ROOT = Path(__file__).resolve().parents[2]
SERVE_CONFIG = REPO_ROOT / "pipelines" / "configs" / "serve.yaml"
SERVE_COLOCATED_CONFIG = REPO_ROOT / "pipelines" / "configs" / "serve_colocated.yaml"
# every committed config file → the application it is `serve build` of
CONFIG_FILES = {SERVE_CONFIG: IMPORT_PATH, SERVE_COLOCATED_CONFIG: COLOCATED_IMPORT_PATH}


def build_serve_config_text(import_path: str = IMPORT_PATH) -> str:
    """The config text ``serve build`` produces for ``import_path``, app renamed."""
    serve_exe = Path(sys.executable).with_name("serve")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "serve.yaml"
        cmd = [str(serve_exe) if serve_exe.exists() else "serve", "build", import_path,
               "--app-dir", str(REPO_ROOT), "-o", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"serve build failed:\n{done.stderr[-2000:]}")
        text = out.read_text()
    if "- name: app1\n" not in text:
        raise RuntimeError("serve build output has no application named app1")
    return text.replace("- name: app1\n", f"- name: {APP_NAME}\n", 1)


def write_serve_config(path: Path = SERVE_CONFIG, import_path: str = IMPORT_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(build_serve_config_text(import_path))
    return path


def load_config(path: Path = SERVE_CONFIG) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def one_model_config(config: dict[str, Any], deployment: str) -> dict[str, Any]:
    """``config`` (a split-layout serve.yaml dict) serving one model deployment only:
    ``import_path`` names ``build_app`` with the other model's URI null, and the other
    model's deployment entry is dropped (``deployment``: ``classifier`` or ``detector``)."""
    others = {"classifier": "detector", "detector": "classifier"}
    if deployment not in others:
        raise ValueError(f"deployment must be classifier|detector, got {deployment!r}")
    config = copy.deepcopy(config)
    (app,) = [a for a in config["applications"] if a["name"] == APP_NAME]
    app["import_path"] = IMPORT_PATH.replace(":app", ":build_app")
    app["args"] = {**(app.get("args") or {}), f"{others[deployment]}_uri": None}
    app["deployments"] = [d for d in app["deployments"] if d["name"] != others[deployment]]
    return config


def deploy_schema(config: dict[str, Any], *, model_uris: dict[str, str] | None = None,
                  model_settings: dict[str, Any] | None = None,
                  ingress_settings: dict[str, Any] | None = None,
                  env_vars: dict[str, str] | None = None, num_cpus: float | None = None,
                  num_replicas: int | Mapping[str, int] | None = None,
                  autoscaling: Mapping[str, dict[str, Any]] | None = None):
    """``config`` (a serve.yaml dict) edited for one environment, as a ``ServeDeploySchema``.

    ``model_uris`` maps deployment name (``classifier``/``detector``) to a URI. (To serve
    one task only, point ``import_path`` at ``components.serving.app:build_app`` with
    ``args: {detector_uri: null}``: the deployment graph comes from code, not from this
    list.) ``env_vars`` go into the application's ``runtime_env`` (e.g.
    ``MLFLOW_TRACKING_URI``, ``VITPIPE_SERVE_TOKEN``).

    Replicas are stated explicitly, one way per deployment: ``num_replicas`` (an int for
    every deployment, or deployment name → count) pins the count and writes
    ``autoscaling_config: null`` (a key merely left out would leave the code's autoscaling
    in force); ``autoscaling`` (deployment name → ``autoscaling_config``) sets autoscaling
    and drops ``num_replicas``. A deployment named by both is a ``ValueError``.
    """
    from ray.serve.schema import ServeDeploySchema

    config = copy.deepcopy(config)
    (app,) = [a for a in config["applications"] if a["name"] == APP_NAME]
    names = {d["name"] for d in app["deployments"]}
    pinned = ({name: num_replicas for name in names} if isinstance(num_replicas, int)
              else dict(num_replicas or {}))
    scaled = dict(autoscaling or {})
    unknown = (set(model_uris or {}) | set(pinned) | set(scaled)) - names
    if unknown:
        raise ValueError(f"no deployment named {sorted(unknown)} in the config")
    both = sorted(set(pinned) & set(scaled))
    if both:
        raise ValueError(f"{both}: give num_replicas or autoscaling, not both")
    for dep in app["deployments"]:
        if "model_uri" in dep.get("user_config", {}):
            if model_uris and dep["name"] in model_uris:
                dep["user_config"]["model_uri"] = model_uris[dep["name"]]
            dep["user_config"].update(model_settings or {})
        elif dep["name"] == "ingress":
            dep["user_config"].update(ingress_settings or {})
        if num_cpus is not None:
            dep.setdefault("ray_actor_options", {})["num_cpus"] = num_cpus
        if dep["name"] in pinned:
            dep["num_replicas"] = pinned[dep["name"]]
            dep["autoscaling_config"] = None
        elif dep["name"] in scaled:
            dep.pop("num_replicas", None)
            dep["autoscaling_config"] = dict(scaled[dep["name"]])
    if env_vars:
        app.setdefault("runtime_env", {}).setdefault("env_vars", {}).update(env_vars)
    return ServeDeploySchema.model_validate(config)


def validate_config(config: dict[str, Any]) -> list[str]:
    """Validate a Serve config: Ray's schema, then each deployment's ``user_config``.

    Returns one summary line per deployment; raises ``ValueError`` / pydantic's
    ``ValidationError`` naming what is wrong.
    """
    from ray.serve.schema import ServeDeploySchema

    from components.serving.settings import (
        ColocatedSettings, IngressSettings, ModelServerSettings,
    )

    schema = ServeDeploySchema.model_validate(config)
    lines = []
    for app in schema.applications:
        for dep in app.deployments:
            user_config = dep.user_config if isinstance(dep.user_config, dict) else {}
            kind = (ModelServerSettings if "model_uri" in user_config
                    else ColocatedSettings if "models" in user_config else IngressSettings)
            kind.model_validate(user_config)
            scaling = dep.autoscaling_config if isinstance(dep.autoscaling_config, dict) else {}
            replicas = (f"{scaling.get('min_replicas', '?')}..{scaling.get('max_replicas', '?')}"
                        if scaling or not isinstance(dep.num_replicas, int)
                        else f"{dep.num_replicas} (fixed)")
            lines.append(
                f"{app.name}/{dep.name}: {kind.__name__} ok, replicas {replicas}, "
                f"max_ongoing_requests {dep.max_ongoing_requests}"
            )
    if not lines:
        raise ValueError("the config has no deployments")
    return lines
