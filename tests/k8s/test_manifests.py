"""The Kubernetes manifests: KubeRay schemas (strict), Serve config, one image, security."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

from k8s_helpers import K8S, ROOT, by_kind, pod_templates, render, run_validator

THIRD_PARTY_IMAGES = ("postgres:", "minio/minio:", "redis:")


def dockerfile_pins() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    return args


# --- KubeRay schemas ---------------------------------------------------------------------

def test_base_ray_resources_validate_strict():
    proc = run_validator(K8S / "base")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 valid, 0 invalid" in proc.stdout, proc.stdout


def test_overlay_ray_resources_validate_strict(overlay):
    name, rendered, docs = overlay
    proc = run_validator(rendered)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 valid, 0 invalid" in proc.stdout, f"{name}: {proc.stdout}"
    assert {d["kind"] for d in docs} >= {"RayCluster", "RayJob", "RayService", "Deployment",
                                        "Service", "Secret", "PersistentVolumeClaim"}


def test_strict_validation_catches_a_misspelled_field(tmp_path):
    """The checker the tests rely on really rejects unknown fields (so a typo fails CI)."""
    doc = yaml.safe_load((K8S / "base" / "raycluster.yaml").read_text())
    doc["spec"]["enableInTreeAutoscalling"] = doc["spec"].pop("enableInTreeAutoscaling")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    proc = run_validator(bad)
    assert proc.returncode == 1
    assert "unknown field 'enableInTreeAutoscalling'" in proc.stdout


# --- one image, pinned versions ----------------------------------------------------------

def _images(docs: list[dict]) -> dict[str, str]:
    out = {}
    for doc in docs:
        for where, pod in pod_templates(doc):
            for c in pod.get("initContainers", []) + pod["containers"]:
                out[f"{where}/{c['name']}"] = c["image"]
    return out


def test_one_pinned_image_for_every_vitpipe_pod(overlay):
    name, _, docs = overlay
    images = _images(docs)
    ours = {where: img for where, img in images.items() if not img.startswith(THIRD_PARTY_IMAGES)}
    assert len(set(ours.values())) == 1, f"{name}: more than one image: {ours}"
    (image,) = set(ours.values())
    repo, _, tag = image.rpartition(":")
    assert repo and tag and tag != "latest", f"{name}: image not pinned by tag: {image}"
    ray_version = dockerfile_pins()["RAY_VERSION"]
    assert f"ray{ray_version}" in tag, f"{name}: image tag {tag} does not name Ray {ray_version}"
    # Head, workers, submitter, Serve replicas and MLflow all run it.
    assert any("RayJob" in w and "submitter" in w for w in ours)
    assert any(w.startswith("Deployment/vitpipe-mlflow") for w in ours)
    for img in images.values():
        assert not img.endswith(":latest") and ":" in img, f"unpinned image {img}"


def test_ray_versions_agree_across_dockerfile_manifests_and_this_checkout():
    import ray

    pins = dockerfile_pins()
    ray_version = pins["RAY_VERSION"]
    base_tag = pins["RAY_IMAGE"].split(":", 1)[1]
    assert base_tag.startswith(f"{ray_version}-"), (pins["RAY_IMAGE"], ray_version)
    py_tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert py_tag in base_tag, f"image Python {base_tag} differs from this checkout's {py_tag}"
    assert ray.__version__ == ray_version, (
        f"the image pins Ray {ray_version} but this checkout runs Ray {ray.__version__}: "
        "bump RAY_VERSION/RAY_IMAGE in Dockerfile and rayVersion in k8s/ together"
    )
    for path in (K8S / "base").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in ("RayCluster", "RayService"):
                spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterConfig"]
                assert spec["rayVersion"] == ray_version, f"{path.name}: {spec['rayVersion']}"


# --- security, resources, autoscaling, storage -------------------------------------------

def test_every_pod_is_non_root_with_requests_and_limits(overlay):
    name, _, docs = overlay
    pods = [p for d in docs for p in pod_templates(d)]
    assert len(pods) >= 8, f"{name}: expected all Ray and MLflow pods, found {[w for w, _ in pods]}"
    for where, pod in pods:
        pod_sc = pod.get("securityContext", {})
        for c in pod.get("initContainers", []) + pod["containers"]:
            sc = c.get("securityContext", {})
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, f"{name} {where}: root allowed"
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0, f"{name} {where}: uid 0"
            assert sc.get("allowPrivilegeEscalation") is False, f"{name} {where}"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name} {where}"
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(kind, {})), f"{name} {where}: {kind} missing"


def test_autoscaling_and_gpu_worker_groups(overlay):
    name, _, docs = overlay
    (cluster,) = by_kind(docs, "RayCluster")
    (service,) = by_kind(docs, "RayService")
    for spec in (cluster["spec"], service["spec"]["rayClusterConfig"]):
        assert spec["enableInTreeAutoscaling"] is True
        assert spec["authOptions"]["mode"] == "token"
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        assert set(groups) == {"cpu", "gpu"}
        for g in groups.values():
            assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] or g["maxReplicas"] == 0
        gpu = groups["gpu"]
        limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
        assert "nvidia.com/gpu" not in str(groups["cpu"]["template"])
        if name == "cpu-dev":
            assert gpu["maxReplicas"] == 0, "cpu-dev must never ask for GPU nodes"
        else:
            assert gpu["maxReplicas"] >= 1
            assert gpu["template"]["spec"]["nodeSelector"]


def test_shared_storage_path_is_on_a_volume_every_ray_pod_mounts(overlay):
    name, _, docs = overlay
    (env,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == "vitpipe-env"]
    storage = env["data"]["VITPIPE_STORAGE_PATH"]
    (pvc,) = [d for d in by_kind(docs, "PersistentVolumeClaim") if d["metadata"]["name"] == "vitpipe-shared"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for doc in by_kind(docs, "RayCluster") + by_kind(docs, "RayService"):
        for where, pod in pod_templates(doc):
            claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
            mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
            shared = [path for path, vol in mounts.items() if claims.get(vol) == "vitpipe-shared"]
            assert shared and any(storage.startswith(p + "/") for p in shared), (
                f"{name} {where}: storage_path {storage} is not on the shared volume"
            )
            env_from = {e.get("configMapRef", {}).get("name") for e in pod["containers"][0]["envFrom"]}
            assert "vitpipe-env" in env_from


def test_every_ray_pod_gets_the_serving_node_env(overlay):
    """What the demo's head and the test cluster run with (Serve's gRPC data plane) reaches
    every Ray pod through the shared ConfigMap, before Ray starts there."""
    from components.serving.settings import SERVE_NODE_ENV

    name, _, docs = overlay
    (env,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == "vitpipe-env"]
    for key, value in SERVE_NODE_ENV.items():
        assert env["data"].get(key) == value, f"{name}: {key} is not {value!r} in vitpipe-env"


def test_mlflow_on_postgres_and_object_storage_with_secrets(overlay):
    name, _, docs = overlay
    (deploy,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "vitpipe-mlflow"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    args = " ".join(container["args"])
    assert "--backend-store-uri=postgresql" in args and "$(POSTGRES_PASSWORD)" in args
    assert "--artifacts-destination=$(MLFLOW_ARTIFACTS_DESTINATION)" in args
    secrets = {e["secretRef"]["name"] for e in container["envFrom"]}
    assert secrets == {"vitpipe-postgres", "vitpipe-s3"}
    services = {d["metadata"]["name"]: d for d in by_kind(docs, "Service")}
    port = services["vitpipe-mlflow"]["spec"]["ports"][0]["port"]
    (env,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == "vitpipe-env"]
    assert env["data"]["MLFLOW_TRACKING_URI"] == f"http://vitpipe-mlflow:{port}"
    if name == "cpu-dev":
        assert {"vitpipe-postgres", "vitpipe-minio"} <= set(services)


def test_gcs_fault_tolerance_on_redis_for_every_ray_cluster(overlay):
    """Both clusters keep their GCS state in Redis, the password from a Secret the overlay
    ships; cpu-dev's address is its own Redis Service; the long-lived cluster names its key
    prefix, the RayService's leaves it to KubeRay (each upgrade's new cluster its own)."""
    name, _, docs = overlay
    (cluster,) = by_kind(docs, "RayCluster")
    (service,) = by_kind(docs, "RayService")
    secrets = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}
    options = [cluster["spec"]["gcsFaultToleranceOptions"],
               service["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]]
    for ft in options:
        assert ft.get("backend", "redis") == "redis"
        host, _, port = ft["redisAddress"].rpartition(":")
        assert host and port.isdigit(), ft["redisAddress"]
        ref = ft["redisPassword"]["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secrets[ref["name"]]["stringData"], f"{name}: {ref}"
        if name == "cpu-dev":
            (redis_svc,) = [s for s in by_kind(docs, "Service") if s["metadata"]["name"] == host]
            assert int(port) in {p["port"] for p in redis_svc["spec"]["ports"]}
    assert options[0]["externalStorageNamespace"]
    assert "externalStorageNamespace" not in options[1]
    # KubeRay refuses a cluster that also sets these itself
    for spec in (cluster["spec"], service["spec"]["rayClusterConfig"]):
        assert "redis-password" not in spec["headGroupSpec"]["rayStartParams"]
        for _, pod in pod_templates({"kind": "RayCluster", "spec": spec}):
            env = {e["name"] for c in pod["containers"] for e in c.get("env", [])}
            assert not env & {"RAY_REDIS_ADDRESS", "RAY_external_storage_namespace"}


def test_example_secrets_hold_placeholders_not_credentials(overlay):
    name, _, docs = overlay
    secrets = by_kind(docs, "Secret")
    assert {s["metadata"]["name"] for s in secrets} >= {"vitpipe-ray-auth", "vitpipe-postgres", "vitpipe-s3",
                                                        "vitpipe-redis"}
    sensitive = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", re.I)
    for secret in secrets:
        assert "data" not in secret, "example secrets use readable stringData only"
        for key, value in secret.get("stringData", {}).items():
            if sensitive.search(key):
                assert str(value).startswith("REPLACE_WITH_"), f"{name} {secret['metadata']['name']}.{key}"


def test_base_renders_on_its_own():
    docs = [d for d in yaml.safe_load_all(render(K8S / "base")) if d]
    assert len(by_kind(docs, "RayCluster")) == 1 and len(by_kind(docs, "RayService")) == 1


def test_rayjob_entrypoint_runs_a_real_pipeline_with_a_valid_config(overlay):
    """The entrypoint's module exists and its config + overrides validate as TrainConfig."""
    import shlex

    from components.training.config import load_train_config

    name, _, docs = overlay
    (job,) = by_kind(docs, "RayJob")
    (env,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == "vitpipe-env"]
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["python", "-m"] and words[3] == "--config"
    module = words[2]
    assert (ROOT / (module.replace(".", "/") + ".py")).exists(), module
    config = Path(words[4].replace("/home/ray/vitpipe", str(ROOT)))
    overrides = [re.sub(r"\$(\w+)", lambda m: env["data"][m.group(1)], w) for w in words[5:]]
    cfg = load_train_config(config, overrides)
    assert cfg.run.storage_path == env["data"]["VITPIPE_STORAGE_PATH"]
    assert cfg.data["root"] == env["data"]["VITPIPE_DATA_ROOT"]
    assert cfg.scaling.use_gpu is (name == "gpu-prod")
