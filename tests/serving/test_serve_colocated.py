"""The colocated layout (``build_app(colocate=True)``): one deployment whose replicas decode
and run the models themselves, deployed as ``serve deploy`` would from the committed
``pipelines/configs/serve_colocated.yaml`` (edited for the test run). Same endpoints and
contracts as the split layout; these tests cover what differs: one deployment, the models'
settings nested in its ``user_config`` (validated, retuned live), the health probe reaching
the models, and dynamic batching inside the ingress replica (a lone request runs at once,
concurrent ones share batches)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from components.tracking.server import free_port

from serve_testlib import AUTH, CLASSIFIER, DETECTOR, TOKEN, encode, wait_healthy

APP = "vitpipe-colocated"
PNG = {**AUTH, "content-type": "image/png"}
WAIT_S = 2.0  # a long batch wait: a lone request that waited for company would show it


def colocated_schema(registered, cache_dir, **classifier_settings):
    """``pipelines/configs/serve_colocated.yaml`` as committed, edited for this test run the
    way an operator edits it (URIs, cache, batching, one replica, the env), then deployed
    through Serve's config path as ``serve deploy`` would."""
    from ray.serve.schema import ServeDeploySchema

    from components.serving.config_file import SERVE_COLOCATED_CONFIG, load_config
    from components.serving.settings import TOKEN_ENV

    config = load_config(SERVE_COLOCATED_CONFIG)
    (app,) = config["applications"]
    app["name"] = APP
    (server,) = app["deployments"]
    server["autoscaling_config"] = None  # pinned: a key left out keeps the code's autoscaling
    server["num_replicas"] = 1
    server["ray_actor_options"]["num_cpus"] = 0.5
    common = {"poll_interval_s": 0.5, "cache_dir": str(cache_dir), "max_batch_size": 8,
              "batch_wait_timeout_s": WAIT_S, "score_threshold": 0.0}
    models = server["user_config"]["models"]
    models["classification"].update(common, model_uri=f"models:/{CLASSIFIER}@champion",
                                    **classifier_settings)
    models["detection"].update(common, model_uri=f"models:/{DETECTOR}@champion")
    app["runtime_env"] = {"env_vars": {"MLFLOW_TRACKING_URI": registered["tracking_uri"],
                                       TOKEN_ENV: TOKEN}}
    return ServeDeploySchema.model_validate(config)


def champion(registered, name: str) -> str:
    """The version @champion names now (other serving tests move it: the registry is shared)."""
    from mlflow import MlflowClient

    uri = registered["tracking_uri"]
    return MlflowClient(uri, registry_uri=uri).get_model_version_by_alias(name, "champion").version


def server_info(url: str) -> dict:
    r = requests.get(f"{url}/v1/models", headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["models"]


@pytest.fixture(scope="module")
def colocated_url(ray_cluster, registered, tmp_path_factory):
    from ray import serve
    from ray.serve.context import _get_global_client

    cache = tmp_path_factory.mktemp("colocated-cache")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        _get_global_client().deploy_apps(colocated_schema(registered, cache))
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url)
        yield {"url": url, "cache": cache}
    finally:
        serve.shutdown()


def test_one_deployment_serves_both_models(colocated_url, registered, sample_image):
    from ray import serve

    url = colocated_url["url"]
    deployments = serve.status().applications[APP].deployments
    assert set(deployments) == {"server"}
    r = requests.post(f"{url}/v1/classify", data=encode(sample_image), headers=PNG, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == {"name": CLASSIFIER, "version": champion(registered, CLASSIFIER)}
    r = requests.post(f"{url}/v1/detect", data=encode(sample_image), headers=PNG, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == {"name": DETECTOR, "version": champion(registered, DETECTOR)}
    models = server_info(url)
    assert set(models) == {"classifier", "detector"}
    health = requests.get(f"{url}/healthz", timeout=60).json()
    assert health["status"] == "ok" and set(health["models"]) == {"classifier", "detector"}
    bad = requests.post(f"{url}/v1/classify", data=b"not an image", headers=PNG, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]
    assert requests.post(f"{url}/v1/classify", data=encode(sample_image),
                         headers={"content-type": "image/png"}, timeout=60).status_code == 401


def test_a_lone_request_runs_at_once_and_concurrent_ones_share_batches(colocated_url, sample_image):
    url, png = colocated_url["url"], encode(sample_image)
    before = server_info(url)["classifier"]["batches"]
    for _ in range(3):  # each alone on an idle replica: run now, not after WAIT_S
        start = time.monotonic()
        assert requests.post(f"{url}/v1/classify", data=png, headers=PNG, timeout=60).ok
        assert time.monotonic() - start < WAIT_S / 2
    after = server_info(url)["classifier"]["batches"]
    assert after["count"] - before["count"] == 3 and after["requests"] - before["requests"] == 3

    def caller(_: int) -> int:
        return sum(requests.post(f"{url}/v1/classify", data=png, headers=PNG, timeout=60).ok
                   for _ in range(3))

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(caller, range(16))) == 48
    final = server_info(url)["classifier"]["batches"]
    batches, served = final["count"] - after["count"], final["requests"] - after["requests"]
    assert served == 48 and batches < served, f"{batches} batches for {served} requests"


def test_nested_model_settings_retune_live_and_are_validated(colocated_url, registered):
    from ray.serve.context import _get_global_client

    from components.serving.config_file import validate_config

    url, cache = colocated_url["url"], colocated_url["cache"]
    before = server_info(url)["classifier"]
    assert before["settings"]["max_batch_size"] == 8
    _get_global_client().deploy_apps(colocated_schema(registered, cache, max_batch_size=4, top_k=2))
    deadline = time.monotonic() + 60
    while (after := server_info(url)["classifier"])["settings"]["max_batch_size"] != 4:
        assert time.monotonic() < deadline, "the nested user_config never reached the replica"
        time.sleep(0.2)
    assert after["settings"]["top_k"] == 2 and after["loaded_at"] == before["loaded_at"]
    assert server_info(url)["detector"]["settings"]["max_batch_size"] == 8

    config = colocated_schema(registered, cache).model_dump(exclude_unset=True)
    assert "server: ColocatedSettings ok" in validate_config(config)[0]
    config["applications"][0]["deployments"][0]["user_config"]["models"]["classification"][
        "max_batch_size"] = 0
    with pytest.raises(ValueError, match="max_batch_size"):
        validate_config(config)
