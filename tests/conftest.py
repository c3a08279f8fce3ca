"""Shared fixtures: real services started on loopback and stopped by PID afterwards.

- ``ray_cluster``: a local Ray cluster (``ray.init``) for the whole session.
- ``mlflow_server``: a real ``mlflow server`` (SQLite + local artifacts, one worker).
- ``s3_server``: moto's S3-compatible server in server mode, on a free port.
- ``synth_dataset``: the embedded synthetic dataset, generated once per session.

Stage-specific fixtures live in each ``tests/<stage>/conftest.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from components.serving.settings import SERVE_NODE_ENV
from components.tracking.server import MlflowServer, free_port

# Tests never reach the network, and each test run's Ray must not join a user's cluster.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.pop("RAY_ADDRESS", None)
# The node environment vitpipe ships for serving (the demo's head, the k8s ConfigMap), set
# before Ray is imported so this process, the test cluster and its workers all share it.
os.environ.update(SERVE_NODE_ENV)


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster: 4 logical CPUs over this machine's cores, a small object store."""
    import ray

    ctx = ray.init(
        _node_ip_address="127.0.0.1",  # bind the local cluster to loopback, not the node's IP
        num_cpus=4,
        object_store_memory=1_500_000_000,
        include_dashboard=False,
        log_to_driver=True,
        configure_logging=False,
    )
    yield ctx
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(root=tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()


@pytest.fixture()
def mlflow_uri(mlflow_server, monkeypatch):
    """The tracking URI, also exported as ``MLFLOW_TRACKING_URI`` for this test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    return mlflow_server.uri


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server on loopback; yields its endpoint URL (credentials: ``test``/``test``)."""
    port = free_port()
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(endpoint, timeout=1)
            break
        except requests.RequestException:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto_server did not start")
            time.sleep(0.3)
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": endpoint,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    os.killpg(os.getpgid(proc.pid), signal.SIGTERM)
    proc.wait(timeout=20)


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory) -> Path:
    """The embedded synthetic dataset (COCO detection + ImageFolder view), small size.

    Layout (see ``components.data.synth``): ``images/{train,val}/*``,
    ``annotations/instances_{train,val}.json``, ``imagefolder/{train,val}/<class>/*``.
    """
    from components.data.synth import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, SynthConfig(seed=0, num_train=48, num_val=16, image_size=96))
    return out
