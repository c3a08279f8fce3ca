"""Loss of the Ray head's GCS under load, with GCS fault tolerance on a real Redis.

Its own cluster (the session's ``ray.init`` cluster has no external Redis): a
``redis-server`` on a free port and a ``ray start --head`` configured as KubeRay's
``gcsFaultToleranceOptions`` configures a head pod (``RAY_REDIS_ADDRESS``,
``RAY_external_storage_namespace``); the classifier app deployed from ``serve.yaml`` with the
registry's ``@champion`` (2 replicas) and 4 closed-loop callers. The GCS process is
SIGKILLed, left down for a while, then started again with the same Redis and namespace:

- every request sent while the GCS is down is answered (0 failed): Serve's proxy and
  replicas talk to each other directly, not through the GCS;
- after the restart the GCS reloads the cluster from Redis, the raylet reconnects and the
  Serve controller answers again: the app is RUNNING with the same replica processes,
  still serving the version ``@champion`` named before the fault; 0 requests lost overall.

Prints one ``chaos: gcs_loss`` line: outage length, requests served during it, recovery time.
"""

from __future__ import annotations

import json
import time
import uuid

import numpy as np
import pytest
import requests
from _serve_load import Callers, summarize
from conftest import APP, AUTH, MODEL, chaos_schema
from gcs_cluster import FaultTolerantHead, RedisServer
from serve_testlib import encode

from components.tracking.server import free_port

pytestmark = pytest.mark.slow

OUTAGE_S = 15.0  # GCS down this long; Ray's raylets wait 60 s for it by default


def report(name: str, **numbers) -> None:
    print(f"chaos: {name} {json.dumps(numbers)}", flush=True)


@pytest.fixture(scope="module")
def gcs_ft_app(chaos_model, tmp_path_factory):
    """Redis, a fault-tolerant head on it, and the classifier app served from its @champion."""
    root = tmp_path_factory.mktemp("gcs-ft")
    redis = RedisServer(root)
    head = None
    try:
        head = FaultTolerantHead(redis, root, namespace=f"vitpipe-chaos-{uuid.uuid4().hex[:8]}",
                                 num_cpus=3)
        schema = chaos_schema(chaos_model, root / "cache", root / "hang-trigger", replicas=2)
        (root / "schema.json").write_text(schema.model_dump_json(exclude_unset=True))
        port = free_port()
        head.driver("deploy", str(root / "schema.json"), str(port))
        url = f"http://127.0.0.1:{port}"
        _wait(lambda: len(_running(head.driver("status"))) == 2, 300, "two running replicas")
        yield {"head": head, "redis": redis, "url": url}
    finally:
        if head is not None:
            head.stop()
        redis.stop()


def _running(status: dict) -> dict[str, int]:
    app = status["applications"].get(APP, {})
    replicas = app.get("deployments", {}).get(MODEL, {}).get("replicas", [])
    return {r["replica_id"]: r["pid"] for r in replicas if r["state"] == "RUNNING"}


def _wait(condition, timeout_s: float, what: str) -> float:
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        try:
            if condition():
                return time.monotonic()
        except Exception as err:  # a driver that cannot reach the GCS yet
            last = err
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s:.0f} s: {last}")
        time.sleep(0.5)


def _served_model(url: str) -> dict:
    resp = requests.get(f"{url}/v1/models", headers=AUTH, timeout=30)
    resp.raise_for_status()
    (info,) = resp.json()["models"].values()
    return info


def test_gcs_loss_under_load_loses_no_request_and_the_app_survives(gcs_ft_app):
    head, redis, url = gcs_ft_app["head"], gcs_ft_app["redis"], gcs_ft_app["url"]
    # the cluster's tables really live in Redis, under its namespace
    assert any(head.namespace in key for key in redis.keys()), redis.keys()[:20]
    before_model = _served_model(url)
    assert before_model["alias"] == "champion"
    replicas_before = _running(head.driver("status"))

    png = encode(np.random.default_rng(0).integers(0, 255, (96, 128, 3), np.uint8))
    headers = {**AUTH, "content-type": "image/png"}
    with Callers(f"{url}/v1/classify", png, headers, max_callers=4) as callers:
        callers.set(4)
        start = time.monotonic()
        time.sleep(4)
        gcs_pid = head.kill_gcs()
        killed = time.monotonic()
        time.sleep(OUTAGE_S)
        restarted_pid = head.restart_gcs()
        restarted = time.monotonic()
        status = {}

        def controller_answers() -> bool:
            status.update(head.driver("status", timeout_s=60))
            return status["applications"].get(APP, {}).get("status") == "RUNNING"

        recovered = _wait(controller_answers, 120, "Serve's controller answering again")
        time.sleep(5)  # load after the recovery too
        end = time.monotonic()
    stats = summarize(callers.answers)
    outage = summarize(callers.answers, killed, restarted)
    report("gcs_loss", callers=4, load_s=round(end - start, 1),
           gcs_down_s=round(restarted - killed, 1),
           recovery_s=round(recovered - restarted, 1),
           during_outage=outage, after_restart=summarize(callers.answers, restarted, end),
           **stats)
    assert gcs_pid != restarted_pid and head.gcs_pid() == restarted_pid
    assert stats["failed"] == 0, [a for a in callers.answers if a.status != 200][:5]
    assert outage["ok"] >= 10 and outage["failed"] == 0  # load was really served while down
    assert summarize(callers.answers, recovered, end)["ok"] > 0
    # the app, its replicas and the @champion version are those from before the fault
    assert status["alive_nodes"] == 1
    assert _running(status) == replicas_before
    after_model = _served_model(url)
    assert (after_model["alias"], after_model["version"]) == ("champion", before_model["version"])
