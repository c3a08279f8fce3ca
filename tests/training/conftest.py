"""Fixtures for the training tests: tiny configs on the session's synthetic dataset."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[2] / "pipelines" / "configs"


@pytest.fixture()
def storage_dir(tmp_path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


@contextlib.contextmanager
def faults_env(**faults):
    """``$VITPIPE_FAULTS`` set to ``faults`` (the run's test hooks) for the block."""
    from components.core.environ import restored_environ
    from components.training.faults import FAULTS_ENV

    with restored_environ(FAULTS_ENV):
        os.environ[FAULTS_ENV] = json.dumps(faults)
        yield


def read_heartbeat(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return None


def _sigterm_worker_when(path: Path, min_step: int, sent: dict, timeout_s: float = 240) -> None:
    """Watcher thread: wait for the worker to reach ``min_step``, then SIGTERM its process."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        beat = read_heartbeat(path)
        if beat and beat["step"] >= min_step:
            if beat["pid"] != os.getpid():  # never signal the test process itself
                os.kill(beat["pid"], signal.SIGTERM)
                sent.update(beat)
            return
        time.sleep(0.02)


@pytest.fixture(scope="session")
def mae_sigterm_run(ray_cluster, mlflow_server, synth_dataset, tmp_path_factory) -> dict:
    """ONE tiny MAE pretraining run (1 CPU worker, 45 steps, every step logged), preempted:

    1. the run starts with the heartbeat hook on (``$VITPIPE_FAULTS``: each rank writes pid
       + step to the run's storage) and ``run.max_failures=0``; a watcher sends a real ``SIGTERM`` to the
       training worker's process once it reached step 2; ``run_training`` (main thread: Ray
       Train's ``fit`` needs it) fails with the worker's "stop requested" error;
    2. the same run name is submitted again and finishes.

    Shared by ``test_sigterm.py`` (the stop checkpoint and the resume) and ``test_mae.py``
    (the MAE loss falls; fine-tuning from its checkpoint): one run instead of three keeps
    the directory's time budget.
    """
    from components.training.config import load_train_config
    from components.training.trainer import TrainingError, run_training

    storage = tmp_path_factory.mktemp("mae-sigterm")
    name = "mae-sigterm"
    overrides = [f"data.root={synth_dataset}", f"run.storage_path={storage}", f"run.name={name}",
                 "epochs=3", "run.max_failures=0", "run.log_every_n_steps=1",
                 "mlflow.enabled=true", f"mlflow.tracking_uri={mlflow_server.uri}",
                 "mlflow.experiment=training-mae", "registry.enabled=true"]
    run_dir = storage / name
    heartbeat = run_dir / "heartbeat" / "rank0.json"
    sent: dict = {}
    watcher = threading.Thread(target=_sigterm_worker_when, args=(heartbeat, 2, sent), daemon=True)
    watcher.start()
    try:
        with faults_env(heartbeat=True):
            run_training(load_train_config(CONFIGS / "pretrain_mae_ci.yaml", overrides))
        first_error = None
    except TrainingError as err:
        first_error = str(err)
    watcher.join(timeout=5)
    last_beat_before_stop = read_heartbeat(heartbeat)
    # Read the stop checkpoint now: once the resumed run has better ones, Ray may delete it.
    from components.core.checkpoint import read_meta

    stops = [{"name": d.name, "step": read_meta(d).step, "files": sorted(f.name for f in d.iterdir()),
              "train_state": json.loads((d / "train_state.json").read_text())}
             for d in sorted(run_dir.glob("checkpoint_step*_stop"))]
    heartbeat.unlink(missing_ok=True)
    with faults_env(heartbeat=True):
        summary = run_training(load_train_config(CONFIGS / "pretrain_mae_ci.yaml", overrides))
    return {"sent": sent, "first_error": first_error, "last_beat_before_stop": last_beat_before_stop,
            "stops": stops, "summary": summary, "heartbeat_after_resume": read_heartbeat(heartbeat),
            "run_dir": run_dir, "run_name": name, "tracking_uri": mlflow_server.uri,
            "experiment": "training-mae"}
