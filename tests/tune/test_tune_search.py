"""The CI search end to end (tune_ci.yaml, 2 trials) on the session's Ray cluster and MLflow
server: its driver SIGKILLed after the first trial finished, then run again (conftest.py).

- MLflow: one parent run for the search, one child run per trial nested under it
  (``mlflow.parentRunId``) with the sampled values as params and per-step metrics;
- ASHA is the scheduler (its one rung is at the trials' last step: both finish);
- the best finished trial's checkpoint is registered with the sampled values as version tags,
  and no alias is set;
- resume: the rerun starts from the search's JSON trial record, with Tune's pickled state
  deleted (same parent run, no third trial), and the trial that had finished is not run again.
"""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tests.tune.conftest import EXPERIMENT, REGISTERED, SEARCH, trial_statuses

pytestmark = pytest.mark.slow


def _runs(client: MlflowClient):
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("vitpipe.tune.role") == "search"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def test_search_nests_trials_under_one_run_and_registers_the_best(resumed_search):
    s = resumed_search
    assert s["second_rc"] == 0, s["second_log"][-4000:]
    summary = s["summary"]
    assert summary["scheduler"] == "AsyncHyperBandScheduler"
    assert (summary["metric"], summary["mode"]) == ("val_top1", "max")
    assert len(summary["trials"]) == 2
    # tune_ci.yaml's only rung is at the trials' final report: both train to their end
    assert [t["status"] for t in summary["trials"]] == ["FINISHED", "FINISHED"]

    client = MlflowClient(s["uri"])
    parents, children = _runs(client)
    assert [p.info.run_id for p in parents] == [summary["parent_run_id"]]
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["search.space.optim.lr"].startswith("loguniform(")
    assert parent.data.params["search.num_samples"] == "2"
    assert parent.data.tags["vitpipe.tune.scheduler"] == "AsyncHyperBandScheduler"

    assert len(children) == 2
    by_trial = {c.data.tags["vitpipe.tune.trial_id"]: c for c in children}
    for trial in summary["trials"]:
        child = by_trial[trial["trial_id"]]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == trial["status"]
        # the sampled values are the child's params
        assert float(child.data.params["optim.lr"]) == pytest.approx(trial["config"]["optim.lr"])
        assert float(child.data.params["optim.weight_decay"]) == trial["config"]["optim.weight_decay"]
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "train_loss")]
        assert steps and len(steps) == len(set(steps)), steps  # per step, each step once
        if trial["status"] == "FINISHED":
            assert sorted(steps)[-1] == 12
            assert "val_top1" in child.data.metrics and "eval_top1" in child.data.metrics

    best = summary["best"]
    finished = [t for t in summary["trials"] if t["status"] == "FINISHED"]
    assert best["metric"] == max(t["metric"] for t in finished)
    assert parent.data.metrics["best_val_top1"] == pytest.approx(best["metric"])
    version = client.get_model_version(REGISTERED, summary["registered_version"])
    assert version.run_id == best["mlflow_run_id"]
    assert float(version.tags["tune.optim.lr"]) == pytest.approx(best["config"]["optim.lr"])
    assert float(version.tags["tune.optim.weight_decay"]) == best["config"]["optim.weight_decay"]
    assert version.tags["vitpipe.tune.parent_run_id"] == parent.info.run_id
    assert not client.get_registered_model(REGISTERED).aliases  # registered, not promoted
    assert not version.aliases


def test_killed_driver_resumes_without_rerunning_finished_trials(resumed_search):
    s = resumed_search
    assert s["first_rc"] == -9  # SIGKILLed mid-search
    assert s["second_rc"] == 0, s["second_log"][-4000:]
    done_before = [t for t, status in s["finished_first"].items() if status == "FINISHED"]
    assert len(done_before) == 1
    assert f"resuming search {SEARCH} from its trial record" in s["second_log"]
    # Tune's pickled state of the first driver was deleted before the rerun, and not needed
    assert any(p.name == "tuner.pkl" for p in s["deleted"]), s["deleted"]
    assert all(not p.exists() for p in s["deleted"])
    record = trial_statuses(s["exp_dir"])
    assert record == {t["trial_id"]: "FINISHED" for t in s["summary"]["trials"]}
    assert set(trial_statuses(s["exp_dir"])) == {t["trial_id"] for t in s["summary"]["trials"]}
    assert sorted(p.name for p in s["trials_dir"].iterdir()) == sorted(
        f"{SEARCH}-{t['trial_id']}" for t in s["summary"]["trials"])  # two trials, no third

    client = MlflowClient(s["uri"])
    parents, children = _runs(client)
    assert len(parents) == 1 and len(children) == 2
    finished_run = next(c for c in children if c.data.tags["vitpipe.tune.trial_id"] == done_before[0])
    # the finished trial was not run again: trained and evaluated once, before the kill
    evals = client.get_metric_history(finished_run.info.run_id, "eval_top1")
    assert len(evals) == 1 and evals[0].timestamp / 1000 < s["killed_at"]
    losses = client.get_metric_history(finished_run.info.run_id, "train_loss")
    assert max(m.timestamp for m in losses) / 1000 < s["killed_at"]
    assert f"Trial {SEARCH}-{done_before[0]} started" not in s["second_log"]
    assert f"Trial {SEARCH}-" in s["second_log"]  # the other trial ran under that name
