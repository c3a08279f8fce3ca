"""MLflow side of a run, against a real ``mlflow server``; run storage, against real files and S3."""

from __future__ import annotations

import time

import pytest
from mlflow.tracking import MlflowClient

from components.tracking.server import free_port
from components.training import storage
from components.training.tracking import (
    MetricLogger, TrackingError, check_tracking_server, last_logged_step, log_params_safely, open_run,
)


def test_unreachable_server_is_one_clear_error():
    with pytest.raises(TrackingError, match="unreachable"):
        check_tracking_server(f"http://127.0.0.1:{free_port()}", timeout_s=2)


def test_reopened_run_keeps_its_id_and_params(mlflow_uri):
    run_id = open_run(mlflow_uri, "training-tests", "reopen", None)
    log_params_safely(mlflow_uri, run_id, {"optim.lr": 0.1})
    MlflowClient(mlflow_uri).set_terminated(run_id, status="FAILED")
    again = open_run(mlflow_uri, "training-tests", "reopen", run_id)
    assert again == run_id
    run = MlflowClient(mlflow_uri).get_run(run_id)
    assert run.info.status == "RUNNING"
    log_params_safely(mlflow_uri, run_id, {"optim.lr": 0.1, "extra": 1})  # no conflict error
    assert MlflowClient(mlflow_uri).get_run(run_id).data.params == {"optim.lr": "0.1", "extra": "1"}
    with pytest.raises(TrackingError, match="does not have"):
        open_run(mlflow_uri, "training-tests", "x", "0123456789abcdef0123456789abcdef")


def test_metrics_flush_only_committed_steps_and_never_twice(mlflow_uri):
    run_id = open_run(mlflow_uri, "training-tests", "flush", None)
    logger = MetricLogger(mlflow_uri, run_id)
    for step in range(1, 7):
        logger.log({"train_loss": 1.0 / step}, step)
    assert logger.flush(up_to_step=4) == 4  # steps 1..4 committed by a checkpoint: queued
    logger.drop_unflushed()  # the worker dies: steps 5, 6 are lost with it
    assert logger.close(timeout_s=60) and logger.sent == 4
    # The replacement worker resumes from the step-4 checkpoint and trains 5..8 again.
    resumed = MetricLogger(mlflow_uri, run_id, last_step=4)
    for step in range(3, 9):
        resumed.log({"train_loss": 1.0 / step}, step)  # 3, 4 are at/below the checkpoint: dropped
    assert resumed.close(timeout_s=60)
    history = MlflowClient(mlflow_uri).get_metric_history(run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(1, 9))
    assert last_logged_step(mlflow_uri, run_id, "train_loss") == 8


def test_server_away_never_blocks_and_metrics_arrive_once_in_order(mlflow_uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    run_id = open_run(mlflow_uri, "training-tests", "transient", None)
    logger = MetricLogger(f"http://127.0.0.1:{free_port()}", run_id, max_retries=1)  # nothing listens
    started = time.monotonic()
    for step in range(1, 31):
        logger.log({"train_loss": 1.0 / step, "lr": 0.1}, step)
        logger.flush(up_to_step=step)
    assert time.monotonic() - started < 1.0  # the training loop is never held up
    assert not logger.close(timeout_s=2)  # still away at the end: nothing raised, reported unsent
    assert logger.failures >= 1 and logger.sent == 0
    logger.uri = mlflow_uri  # the server is back (the chaos tests stop and restart a real one)
    assert logger.close(timeout_s=60)
    history = MlflowClient(mlflow_uri).get_metric_history(run_id, "train_loss")
    assert [m.step for m in history] == list(range(1, 31))


def test_full_buffer_drops_oldest_steps_and_counts_them(mlflow_uri):
    run_id = open_run(mlflow_uri, "training-tests", "overflow", None)
    logger = MetricLogger(f"http://127.0.0.1:{free_port()}", run_id, max_retries=1, buffer_steps=5)
    for step in range(1, 9):
        logger.log({"train_loss": 1.0}, step)
        logger.flush(up_to_step=step)
    assert logger.dropped == 3 and logger.backlog() == 5  # steps 1..3 gone, 4..8 held
    logger.close(timeout_s=0)


def test_local_storage_and_run_record(tmp_path):
    path = storage.check_storage(str(tmp_path / "runs"))
    assert path == str((tmp_path / "runs").resolve())
    run_dir = storage.join(path, "r1")
    assert storage.read_run_record(run_dir) is None
    storage.write_run_record(run_dir, {"mlflow_run_id": "abc"})
    assert storage.read_run_record(run_dir) == {"mlflow_run_id": "abc"}
    assert not [p for p in (tmp_path / "runs").iterdir() if p.name.startswith(".vitpipe_probe")]


def test_unwritable_storage_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")  # even root cannot create a directory under a file
    with pytest.raises(storage.StorageError, match="not writable"):
        storage.check_storage(str(blocker / "runs"))


def test_object_storage_run_record(s3_server):
    import boto3

    boto3.client("s3").create_bucket(Bucket="vitpipe-runs")
    path = storage.check_storage("s3://vitpipe-runs/train")
    storage.write_run_record(storage.join(path, "r2"), {"mlflow_run_id": "xyz"})
    assert storage.read_run_record(storage.join(path, "r2")) == {"mlflow_run_id": "xyz"}
    # Ray Train names a checkpoint by its path inside the filesystem (no scheme); the run's
    # summary gives it back as a URI that reads the same object.
    storage.write_text(storage.join(path, "r2", "checkpoint_1", "meta.json"), "{}")
    _, inner = storage.filesystem(storage.join(path, "r2", "checkpoint_1"))
    uri = storage.in_storage(path, inner)
    assert uri == "s3://vitpipe-runs/train/r2/checkpoint_1"
    assert storage.read_text(storage.join(uri, "meta.json")) == "{}"
    assert storage.in_storage("/local/runs", "/local/runs/r2/checkpoint_1") == "/local/runs/r2/checkpoint_1"
    with pytest.raises(storage.StorageError):
        storage.check_storage("s3://no-such-bucket-here/x")
