"""Helpers for the Kubernetes manifest tests: rendered overlays and the KubeRay schema checker.

The overlays are rendered with a real kustomize (``kubectl kustomize``, or a standalone
``kustomize``); the Ray resources are checked with the strict KubeRay schemas in
``../shared/k8s-schemas`` (beside the repository, in CI as here). A missing renderer or
schema folder is a test failure with the reason, never a skip.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("cpu-dev", "gpu-prod")
SCHEMAS = ROOT.parent / "shared" / "k8s-schemas"
RAY_KINDS = ("RayCluster", "RayJob", "RayService")


def kustomize_command(path: Path) -> list[str]:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize", str(path)]
    if shutil.which("kustomize"):
        return ["kustomize", "build", str(path)]
    pytest.fail("no kustomize renderer: install kubectl (ships kustomize) or kustomize")


def render(path: Path) -> str:
    proc = subprocess.run(kustomize_command(path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kustomize failed for {path}:\n{proc.stderr}"
    return proc.stdout


def run_validator(*paths: Path) -> subprocess.CompletedProcess:
    script = SCHEMAS / "validate.py"
    if not script.exists():
        pytest.fail(f"{script} is missing: CI lays shared/ beside the repository")
    return subprocess.run(
        [sys.executable, str(script), *map(str, paths)],
        capture_output=True, text=True, timeout=120,
    )


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) for every pod a resource creates."""
    kind, spec = doc["kind"], doc.get("spec", {})
    out = []
    if kind in ("Deployment", "StatefulSet", "Job"):
        out.append((f"{kind}/{doc['metadata']['name']}", spec["template"]["spec"]))
    cluster = None
    if kind == "RayCluster":
        cluster = spec
    elif kind == "RayService":
        cluster = spec["rayClusterConfig"]
    elif kind == "RayJob":
        cluster = spec.get("rayClusterSpec")
        if "submitterPodTemplate" in spec:
            out.append((f"RayJob/{doc['metadata']['name']}/submitter", spec["submitterPodTemplate"]["spec"]))
    if cluster:
        out.append((f"{kind}/head", cluster["headGroupSpec"]["template"]["spec"]))
        for group in cluster.get("workerGroupSpecs", []):
            out.append((f"{kind}/{group['groupName']}", group["template"]["spec"]))
    return out
