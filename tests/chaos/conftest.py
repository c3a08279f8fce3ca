"""Chaos fixtures: the serving application (classifier only) on the session Ray cluster, with
fast health checks and the fault-injection trigger in its environment, under real load.

The load generator and the replica sampler are the ones ``benchmarks/bench_autoscale.py``
uses (``benchmarks/_serve_load.py``); checkpoints, registration and the health wait are the
serving tests' own (``tests/serving/serve_testlib.py``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
for folder in (ROOT / "tests" / "serving", ROOT / "benchmarks"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from serve_testlib import AUTH, TOKEN, encode, make_checkpoint, set_champion, wait_healthy  # noqa: E402

from components.tracking.server import free_port  # noqa: E402

APP = "vitpipe"  # the name serve.yaml gives the application
MODEL = "classifier"
CHAOS_CLASSIFIER = "chaos-test-classifier"  # own name: the MLflow server is shared
# Faster than the shipped values so a fault is seen within seconds; the mechanism is the same.
HEALTH = {"health_check_period_s": 1.0, "health_check_timeout_s": 5.0,
          "graceful_shutdown_timeout_s": 2.0}
STALL_TIMEOUT_S = 3.0


@pytest.fixture(scope="session")
def chaos_model(mlflow_server, tmp_path_factory):
    from components.tracking.registry import register_checkpoint

    ckpt = make_checkpoint(tmp_path_factory.mktemp("chaos-ckpt") / "v", "vit_demo",
                           "classification", seed=7)
    version = register_checkpoint(ckpt, task="classification",
                                  registered_name=CHAOS_CLASSIFIER,
                                  tracking_uri=mlflow_server.uri)
    set_champion(mlflow_server.uri, CHAOS_CLASSIFIER, version)
    return {"tracking_uri": mlflow_server.uri, "uri": f"models:/{CHAOS_CLASSIFIER}@champion"}


def chaos_schema(model: dict, cache: Path, hang_file: Path, *, replicas: int | None = None,
                 autoscaling: dict | None = None, request_timeout_s: float = 30.0):
    """serve.yaml, classifier only (``build_app`` with ``detector_uri: null``), edited for
    the test, as a ``ServeDeploySchema``: fast health checks, the fault-injection trigger in
    the environment; ``replicas`` pins the classifier, ``autoscaling`` scales it."""
    from components.serving.config_file import deploy_schema, load_config, one_model_config
    from components.serving.faults import HANG_FILE_ENV
    from components.serving.settings import TOKEN_ENV

    config = one_model_config(load_config(), MODEL)
    for dep in config["applications"][0]["deployments"]:
        if dep["name"] == MODEL:
            dep.update(HEALTH)
    return deploy_schema(
        config, model_uris={MODEL: model["uri"]},
        model_settings={"cache_dir": str(cache), "poll_interval_s": 0.0,
                        "max_batch_size": 8, "stall_timeout_s": STALL_TIMEOUT_S},
        ingress_settings={"request_timeout_s": request_timeout_s},
        env_vars={"MLFLOW_TRACKING_URI": model["tracking_uri"], TOKEN_ENV: TOKEN,
                  HANG_FILE_ENV: str(hang_file)},
        num_cpus=0.5,
        num_replicas={"ingress": 1, **({MODEL: replicas} if replicas else {})},
        autoscaling={MODEL: autoscaling} if autoscaling else None,
    )


class ChaosApp:
    """The deployed application and what the tests do to it."""

    def __init__(self, model: dict, cache: Path, hang_file: Path, url: str) -> None:
        self.model, self.cache, self.hang_file, self.url = model, cache, hang_file, url
        self.png = encode(np.random.default_rng(0).integers(0, 255, (96, 128, 3), np.uint8))
        self.headers = {**AUTH, "content-type": "image/png"}

    def deploy(self, *, replicas: int | None = None, autoscaling: dict | None = None,
               request_timeout_s: float = 30.0) -> None:
        """Deploy :func:`chaos_schema` on the session cluster. A change of scaling mode
        rebuilds the app (Ray hashes the autoscaling policy into the code version); a change
        of ``request_timeout_s`` retunes the ingress live."""
        from ray.serve.context import _get_global_client

        _get_global_client().deploy_apps(chaos_schema(
            self.model, self.cache, self.hang_file, replicas=replicas,
            autoscaling=autoscaling, request_timeout_s=request_timeout_s))

    def replicas(self) -> dict[str, dict]:
        """The model's replicas now: replica id → ``{"state", "pid"}`` (Serve's details API)."""
        from ray.serve.context import _get_global_client

        details = _get_global_client().get_serve_details()
        deployment = details["applications"][APP]["deployments"].get(MODEL, {})
        return {r["replica_id"]: {"state": r["state"], "pid": r.get("pid")}
                for r in deployment.get("replicas", [])}

    def running(self) -> dict[str, int]:
        return {rid: r["pid"] for rid, r in self.replicas().items() if r["state"] == "RUNNING"}

    def wait_for(self, condition, timeout_s: float, what: str) -> float:
        """Poll ``condition()`` until true; returns when (monotonic)."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s: "
                                   f"replicas {self.replicas()}")
            time.sleep(0.25)
        return time.monotonic()


@pytest.fixture(scope="module")
def chaos_app(ray_cluster, chaos_model, tmp_path_factory):
    """Serve on a free loopback port, the classifier app deployed with 2 pinned replicas."""
    from ray import serve

    work = tmp_path_factory.mktemp("chaos")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        app = ChaosApp(chaos_model, work / "cache", work / "hang-trigger",
                       f"http://127.0.0.1:{port}")
        app.deploy(replicas=2)
        wait_healthy(app.url)
        app.wait_for(lambda: len(app.running()) == 2, 180, "two running replicas")
        yield app
    finally:
        serve.shutdown()
