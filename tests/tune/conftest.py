"""The tune tests' one search: ``python -m pipelines.tune`` (tune_ci.yaml: 2 trials, one at a
time) as a subprocess on the session's Ray cluster and MLflow server, SIGKILLed once its
first trial has finished (as the search's trial record says), Tune's own state files
(pickles, experiment state) deleted, and run again to the end.

Shared by the search test (MLflow layout, ASHA, registration) and the resume test: one
search instead of two keeps the folder's time budget.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.tune.record import RECORD_FILE

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "pipelines" / "configs" / "tune_ci.yaml"
SEARCH = "tune-test"
REGISTERED = "tune-test-classifier"
EXPERIMENT = "tune-tests"


def trial_statuses(exp_dir: Path) -> dict[str, str]:
    """``{trial_id: status}`` from the search's trial record (empty until written)."""
    try:
        data = json.loads((exp_dir / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {t["trial_id"]: t["status"] for t in data["trials"]}


def tune_state_files(exp_dir: Path) -> list[Path]:
    """What Ray Tune wrote for the search: its pickles and experiment state files."""
    return [p for p in exp_dir.rglob("*") if p.is_file() and (
        p.suffix == ".pkl" or p.name.startswith(("experiment_state", "basic-variant-state", "searcher-state")))]


def _driver(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipelines.tune", "--config", str(CONFIG), *args],
                            cwd=REPO, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


@pytest.fixture(scope="session")
def resumed_search(ray_cluster, mlflow_server, synth_dataset, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("tune")
    storage = work / "runs"
    args = [f"data.root={synth_dataset}", f"run.storage_path={storage}", f"run.name={SEARCH}",
            f"mlflow.tracking_uri={mlflow_server.uri}", f"mlflow.experiment={EXPERIMENT}",
            f"registry.registered_name={REGISTERED}"]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address_info["gcs_address"],
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    exp_dir = storage / SEARCH

    first = _driver(args, env, work / "first.log")
    finished_first: dict[str, str] = {}
    deadline = time.monotonic() + 420
    try:
        while time.monotonic() < deadline and first.poll() is None:
            statuses = trial_statuses(exp_dir)
            if "FINISHED" in statuses.values():
                finished_first = statuses
                break
            time.sleep(0.5)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    killed_at = time.time()
    first_log = (work / "first.log").read_text(errors="replace")
    assert finished_first, f"no trial finished before the deadline (rc {first.returncode}):\n{first_log[-3000:]}"
    # the resume reads no pickle: Tune's state of the killed driver is gone
    deleted = tune_state_files(exp_dir)
    for path in deleted:
        path.unlink()

    second = _driver(args, env, work / "second.log")
    try:
        second.wait(timeout=420)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
            second.wait(timeout=60)
    second_log = (work / "second.log").read_text(errors="replace")
    lines = [ln for ln in second_log.splitlines() if ln.startswith("{")]
    return {"first_rc": first.returncode, "finished_first": finished_first, "killed_at": killed_at,
            "second_rc": second.returncode, "second_log": second_log,
            "summary": json.loads(lines[-1]) if lines else None, "deleted": deleted, "exp_dir": exp_dir,
            "trials_dir": exp_dir / "trials", "uri": mlflow_server.uri}
