"""How a trial's Tune result becomes its status in the summary and on its MLflow run: a trial
that trained to its end reported ``vitpipe_done`` after its evaluation (FINISHED); one that
ended without it was stopped by ASHA (KILLED), unless Tune holds its error (FAILED)."""

from __future__ import annotations

from ray.tune import Result

from components.tune.driver import _trial_summary
from components.tune.trial import CHECKPOINT_KEY, DONE_KEY, RUN_ID_KEY


def _result(metrics: dict, error: Exception | None = None) -> Result:
    return Result(metrics={"trial_id": "abc_00001", "config": {"optim.lr": 1e-3}, **metrics},
                  checkpoint=None, error=error, path="/runs/search/vitpipe_trial_search_abc_00001_1")


def test_finished_killed_and_failed_trials():
    done = _trial_summary(_result({"val_top1": 0.7, "step": 12.0, DONE_KEY: 1.0, "eval_top1": 0.68,
                                   CHECKPOINT_KEY: "/runs/ckpt", RUN_ID_KEY: "r1"}), "val_top1")
    assert done["status"] == "FINISHED" and done["metric"] == 0.7 and done["checkpoint"] == "/runs/ckpt"
    assert done["eval"] == {"eval_top1": 0.68} and done["config"] == {"optim.lr": 1e-3}
    assert done["mlflow_run_id"] == "r1" and done["trial_id"] == "abc_00001"

    stopped = _trial_summary(_result({"val_top1": 0.2, "step": 7.0}), "val_top1")
    assert stopped["status"] == "KILLED" and stopped["checkpoint"] is None and stopped["metric"] == 0.2

    failed = _trial_summary(_result({}, error=RuntimeError("worker died\ntraceback...")), "val_top1")
    assert failed["status"] == "FAILED" and failed["error"] == "worker died" and failed["metric"] is None
