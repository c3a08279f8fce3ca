"""A training worker that gets a real SIGTERM (node drain, spot preemption) writes a
checkpoint before it exits, and re-submitting the run resumes from that checkpoint.

Real parts: the session's local Ray cluster, a real MLflow server, the synthetic set. The
run is the session's tiny MAE pretraining run (``mae_sigterm_run`` in conftest.py: the
SIGTERM path is the same for every task, and the MAE checkpoint has the most to restore:
encoder, decoder, optimizer, scheduler, RNG, data position). The worker's PID and step come
from the run's heartbeat files (the heartbeat test hook of ``$VITPIPE_FAULTS``).

With ``run.max_failures=0`` the preempted run stops (with ``max_failures>0`` Ray Train's
``FailureConfig`` restarts the workers from the same checkpoint); the resubmission starts at
the stopped step, finishes, and MLflow holds every step exactly once, in one run.
"""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from components.core.checkpoint import read_meta
from components.tasks.mae import MAE_DECODER_FILE


@pytest.mark.slow
def test_sigterm_checkpoints_then_resubmission_resumes_from_that_step(mae_sigterm_run):
    run = mae_sigterm_run
    sent = run["sent"]
    assert sent, "the worker never reached step 2"
    assert run["first_error"] is not None and "stop requested at step" in run["first_error"]

    # The checkpoint written on SIGTERM: the step the worker had reached, resume state beside it.
    assert len(run["stops"]) == 1, run["stops"]
    stop = run["stops"][0]
    stopped_at = stop["step"]
    assert stopped_at >= sent["step"] >= 2
    assert run["last_beat_before_stop"]["step"] == stopped_at  # it trained no further
    assert stop["train_state"]["progress"]["global_step"] == stopped_at
    assert {"model.safetensors", "vitpipe.json", "optimizer.safetensors", "train_state.json",
            "rng_rank0.safetensors", MAE_DECODER_FILE} <= set(stop["files"])

    # Re-submitting the same run name resumed at the stopped step (not 0) and finished.
    summary = run["summary"]
    total = summary["steps"]
    assert stopped_at < total
    assert run["heartbeat_after_resume"]["started_at_step"] == stopped_at
    assert read_meta(summary["checkpoint"]).step > stopped_at

    client = MlflowClient(run["tracking_uri"])
    run_id = summary["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "FINISHED"
    experiment = client.get_experiment_by_name(run["experiment"])
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.mlflow.runName = '{run['run_name']}'")
    assert [r.info.run_id for r in runs] == [run_id]  # one MLflow run across the stop
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert sorted(steps) == list(range(1, total + 1)), steps  # each step logged exactly once
