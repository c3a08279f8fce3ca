"""The search's trial record (plain JSON, what a resumed search starts from) and how a trial's
last Tune result becomes its status: a trial that trained to its end reported
``vitpipe_done`` after its evaluation (FINISHED); one that ended without it was stopped by
ASHA (KILLED), unless it raised (FAILED)."""

from __future__ import annotations

import json

import pytest

from components.core.config import ConfigError
from components.tune.config import load_tune_config
from components.tune.driver import _outcome
from components.tune.record import RECORD_FILE, TrialRecord, sample_trials
from components.tune.trial import CHECKPOINT_KEY, DONE_KEY, RUN_ID_KEY
from tests.tune.test_tune_config import CI


def test_finished_killed_and_failed_trials():
    done = _outcome({"val_top1": 0.7, "step": 12.0, DONE_KEY: 1.0, "eval_top1": 0.68,
                     CHECKPOINT_KEY: "/runs/ckpt", RUN_ID_KEY: "r1"}, None, "val_top1")
    assert done["status"] == "FINISHED" and done["metric"] == 0.7 and done["checkpoint"] == "/runs/ckpt"
    assert done["eval"] == {"eval_top1": 0.68} and done["mlflow_run_id"] == "r1" and done["error"] is None

    stopped = _outcome({"val_top1": 0.2, "step": 7.0}, None, "val_top1")
    assert stopped["status"] == "KILLED" and stopped["checkpoint"] is None and stopped["metric"] == 0.2
    assert "mlflow_run_id" not in stopped  # an update keeps the id the record already has

    failed = _outcome({}, "worker died\ntraceback...", "val_top1")
    assert failed["status"] == "FAILED" and failed["error"] == "worker died" and failed["metric"] is None


def test_seeded_space_draws_the_same_trials():
    space = ["search.num_samples=5", "search.space.optim.clip_grad_norm={uniform: [0.1, 2.0]}",
             "search.space.optim.warmup_steps={randint: [0, 3]}"]
    cfg = load_tune_config(CI, space)
    first, again = sample_trials(cfg.search), sample_trials(cfg.search)
    assert [t["config"] for t in first] == [t["config"] for t in again]
    assert len({t["trial_id"] for t in first}) == 5
    low, high = cfg.search.space["optim.lr"].loguniform
    lrs = [t["config"]["optim.lr"] for t in first]
    assert len(set(lrs)) == 5 and all(low <= v <= high for v in lrs)
    assert all(0.1 <= t["config"]["optim.clip_grad_norm"] <= 2.0 for t in first)
    assert all(t["config"]["optim.warmup_steps"] in range(4) for t in first)
    assert all(t["config"]["optim.weight_decay"] in (0.0, 0.05) for t in first)
    other = load_tune_config(CI, [*space, "search.seed=1"])
    assert [t["config"] for t in sample_trials(other.search)] != [t["config"] for t in first]


def test_record_resumes_the_trials_not_ended(tmp_path):
    cfg = load_tune_config(CI, ["search.num_samples=4"])
    record = TrialRecord.open(str(tmp_path), cfg.search)
    assert not record.resumed and {t["status"] for t in record.trials} == {"PENDING"}
    ids = [t["trial_id"] for t in record.trials]
    record.update(ids[0], status="FINISHED", metric=0.5)
    record.update(ids[1], status="KILLED")
    record.update(ids[2], status="FAILED", error="boom")
    record.update(ids[3], status="RUNNING")
    on_disk = json.loads((tmp_path / RECORD_FILE).read_text())
    assert [t["status"] for t in on_disk["trials"]] == ["FINISHED", "KILLED", "FAILED", "RUNNING"]

    resumed = TrialRecord.open(str(tmp_path), cfg.search)
    assert resumed.resumed and resumed.data["attempts"] == 1
    assert [t["config"] for t in resumed.trials] == [t["config"] for t in record.trials]
    assert [t["trial_id"] for t in resumed.to_run(resume_errored=False)] == [ids[3]]
    assert [t["trial_id"] for t in resumed.to_run(resume_errored=True)] == [ids[2], ids[3]]

    changed = load_tune_config(CI, ["search.num_samples=4", "search.seed=7"])
    with pytest.raises(ConfigError, match="another search section"):
        TrialRecord.open(str(tmp_path), changed.search)
