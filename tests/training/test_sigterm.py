"""A training worker that gets a real SIGTERM (node drain, spot preemption) writes a
checkpoint before it exits, and re-submitting the run resumes from that checkpoint.

Real parts: the session's local Ray cluster, a real MLflow server, the synthetic set. The
worker's PID and step come from the run's heartbeat files (``run.heartbeat``, an
off-by-default hook: each rank writes ``{pid, step, started_at_step}`` to the run's storage
at every log boundary); the test sends ``SIGTERM`` to that process from a watcher thread
while ``run_training`` runs in the main thread (Ray Train's ``fit`` needs it).

With ``run.max_failures=0`` the preempted run stops (a real drain with ``max_failures>0``
would be restarted by ``FailureConfig`` from the same checkpoint); the resubmission starts
at the stopped step, finishes, and MLflow holds every step exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from components.core.checkpoint import read_meta
from components.training.config import load_train_config
from components.training.trainer import TrainingError, run_training

CONFIGS = Path(__file__).resolve().parents[2] / "pipelines" / "configs"


def _read_heartbeat(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return None


def _sigterm_worker_when(path: Path, min_step: int, sent: dict, timeout_s: float = 240) -> None:
    """Watcher thread: wait for the worker to reach ``min_step``, then SIGTERM its process."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        beat = _read_heartbeat(path)
        if beat and beat["step"] >= min_step:
            assert beat["pid"] != os.getpid()
            os.kill(beat["pid"], signal.SIGTERM)
            sent.update(beat)
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_sigterm_checkpoints_then_resubmission_resumes_from_that_step(
        ray_cluster, mlflow_uri, synth_dataset, storage_dir):
    name = "sigterm-run"
    overrides = [f"data.root={synth_dataset}", f"run.storage_path={storage_dir}", f"run.name={name}",
                 "run.heartbeat=true", "run.max_failures=0", "run.log_every_n_steps=1",
                 "epochs=2", "batch_size=8", "mlflow.enabled=true", "mlflow.experiment=training-sigterm",
                 "data.augment.enabled=false"]
    cfg = load_train_config(CONFIGS / "pretrain_ci.yaml", overrides)
    run_dir = storage_dir / name
    heartbeat = run_dir / "heartbeat" / "rank0.json"

    sent: dict = {}
    watcher = threading.Thread(target=_sigterm_worker_when, args=(heartbeat, 2, sent), daemon=True)
    watcher.start()
    with pytest.raises(TrainingError, match="stop requested at step"):
        run_training(cfg)
    watcher.join(timeout=5)
    assert sent, "the worker never reached step 2"

    # The checkpoint written on SIGTERM: the step the worker had reached, resume state beside it.
    stops = sorted(run_dir.glob("checkpoint_step*_stop"))
    assert len(stops) == 1, sorted(p.name for p in run_dir.iterdir())
    stop_dir = stops[0]
    stopped_at = read_meta(stop_dir).step
    assert stopped_at >= sent["step"] >= 2
    state = json.loads((stop_dir / "train_state.json").read_text())
    assert state["progress"]["global_step"] == stopped_at
    assert (stop_dir / "optimizer.safetensors").is_file()
    assert (stop_dir / "rng_rank0.safetensors").is_file()
    assert json.loads(heartbeat.read_text())["step"] == stopped_at  # it trained no further

    # Re-submit the same run name: resumes at the stopped step (not 0) and finishes.
    heartbeat.unlink()
    summary = run_training(load_train_config(CONFIGS / "pretrain_ci.yaml", overrides))
    total = summary["steps"]
    assert stopped_at < total
    assert json.loads(heartbeat.read_text())["started_at_step"] == stopped_at

    client = MlflowClient(mlflow_uri)
    run_id = summary["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "FINISHED"
    experiment = client.get_experiment_by_name("training-sigterm")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.mlflow.runName = '{name}'")
    assert [r.info.run_id for r in runs] == [run_id]  # one MLflow run across the stop
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert sorted(steps) == list(range(1, total + 1)), steps  # each step logged exactly once
