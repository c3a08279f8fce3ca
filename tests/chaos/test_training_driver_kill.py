"""The training driver (``python -m pipelines.pretrain``, a process of its own joined to the
session's Ray cluster as a job would be) is SIGKILLed once its first checkpoint is in the
run's storage; the same command is run again.

Checked: the second driver resumes from the last checkpoint (not from step 0) into the SAME
MLflow run: one run of that name, FINISHED, the run record names it, every step of
``train_loss`` exactly once, 1..N continuous, the steps logged before the kill kept.
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
from mlflow.tracking import MlflowClient

from components.training.faults import FAULTS_ENV

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = "chaos-driver-kill"


def _driver(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipelines.pretrain", *args], cwd=REPO, env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("checkpoint_step*")) if run_dir.is_dir() else []


def _logged(uri: str, run_name: str) -> list[int]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.runName = '{run_name}'") if exp else []
    return [m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")] if runs else []


def test_killed_driver_resubmitted_resumes_into_the_same_mlflow_run(
        ray_cluster, mlflow_server, synth_dataset, tmp_path):
    name = "driver-kill"
    storage = tmp_path / "runs"
    run_dir = storage / name
    args = ["--config", str(REPO / "pipelines" / "configs" / "pretrain_ci.yaml"),
            f"data.root={synth_dataset}", f"run.storage_path={storage}", f"run.name={name}", "epochs=3",
            "run.log_every_n_steps=1", "checkpoint.every_n_steps=4", "data.augment.enabled=false",
            "mlflow.enabled=true", f"mlflow.tracking_uri={mlflow_server.uri}",
            f"mlflow.experiment={EXPERIMENT}", "registry.enabled=false"]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address_info["gcs_address"],
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    # The first driver's steps take 0.3 s at least: it is still training when the test sees
    # its first checkpoint committed, however fast the machine.
    first = _driver(args, {**env, FAULTS_ENV: json.dumps({"step_sleep_s": 0.3})}, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 420
        # The first checkpoint is committed once its steps' metrics are in MLflow (they are
        # sent only for steps a committed checkpoint covers).
        while not (_checkpoints(run_dir) and _logged(mlflow_server.uri, name)):
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no committed checkpoint within the time limit"
            time.sleep(0.2)
        killed_at = time.time()
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == -signal.SIGKILL
    step_at_kill = max(int(p.name[len("checkpoint_step"):][:7]) for p in _checkpoints(run_dir))
    record = json.loads((run_dir / "vitpipe_run.json").read_text())

    resumed_at = time.monotonic()
    second = _driver(args, env, tmp_path / "second.log")
    second.wait(timeout=600)
    out = (tmp_path / "second.log").read_text()
    assert second.returncode == 0, out[-4000:]
    recovery_s = time.monotonic() - resumed_at
    # The summary is the driver's JSON line; Ray's forwarded worker logs may still follow it.
    summary = next(json.loads(line) for line in reversed(out.splitlines())
                   if line.startswith("{") and '"mlflow_run_id"' in line)

    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                              filter_string=f"tags.mlflow.runName = '{name}'")
    assert [r.info.run_id for r in runs] == [record["mlflow_run_id"]] == [summary["mlflow_run_id"]]
    run_id = summary["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "FINISHED"
    total = summary["steps"]
    history = client.get_metric_history(run_id, "train_loss")
    steps = sorted(m.step for m in history)
    assert steps == list(range(1, total + 1)), steps  # each step once, none missing
    before_kill = sorted(m.step for m in history if m.timestamp / 1000 < killed_at)
    assert before_kill and before_kill == list(range(1, before_kill[-1] + 1))
    # Resumed from a checkpoint, not from step 0: the resumed worker says where it started.
    resumed = [line for line in out.splitlines() if "resumed at step" in line]
    assert resumed, out[-4000:]
    resumed_step = int(resumed[0].split("resumed at step ")[1].split()[0])
    assert resumed_step >= 4
    print("chaos-driver-kill", json.dumps({
        "steps": total, "checkpoint_step_at_kill": step_at_kill, "resumed_step": resumed_step,
        "logged_before_kill": before_kill[-1], "steps_retrained": max(0, before_kill[-1] - resumed_step),
        "duplicated": len(steps) - len(set(steps)), "second_driver_s": round(recovery_s, 1)}))
