"""The driver → worker plan and the test hooks: typed, frozen, checked before any worker starts.

Real parts: the test hooks write real files (the heartbeat) and kill a real process (a child
forked here), as they do inside a Ray Train worker.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import pytest

from components.core.config import ConfigError
from components.training.config import TrainConfig
from components.training.faults import FAULTS_ENV, FaultHooks, Faults, faults_from_env
from components.training.plan import StepPlan, WorkerPlan


def _plan(**changes) -> WorkerPlan:
    fields = dict(config=TrainConfig.model_validate({"data": {"root": "unused"}}),
                  steps=StepPlan(steps_per_epoch=3, total_steps=6, epochs=2), class_names=("a", "b"),
                  image_size=64, fingerprint="f", batch_task="classification", has_val=True,
                  tracking_uri=None, mlflow_run_id=None, init_state_ref=None, init_meta=None,
                  faults=Faults(), train_rows=None)
    return WorkerPlan(**{**fields, **changes})


def test_the_plan_is_frozen_and_has_no_hidden_defaults():
    plan = _plan()
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.image_size = 96
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               for f in dataclasses.fields(WorkerPlan))
    assert not plan.tracked and _plan(tracking_uri="http://x", mlflow_run_id="r").tracked
    with pytest.raises(ValueError, match="go together"):
        _plan(tracking_uri="http://x")
    with pytest.raises(ValueError, match="no step"):
        _plan(steps=StepPlan(steps_per_epoch=3, total_steps=0, epochs=0))


def test_no_faults_unless_the_environment_asks(tmp_path):
    assert faults_from_env(str(tmp_path), {}) == Faults()
    assert faults_from_env(str(tmp_path), {FAULTS_ENV: " "}) == Faults()
    faults = faults_from_env(str(tmp_path), {FAULTS_ENV: json.dumps({"fail_at_step": 9, "heartbeat": True})})
    assert faults == Faults(fail_at_step=9, marker=f"{tmp_path}/fault_injected",
                            heartbeat_dir=f"{tmp_path}/heartbeat")
    assert faults_from_env(str(tmp_path), {FAULTS_ENV: '{"step_sleep_s": 0.25}'}) == Faults(step_sleep_s=0.25)


@pytest.mark.parametrize("value, needle", [
    ("{fail_at_step: 9}", "is not JSON"),
    ("[9]", "must be a JSON object"),
    ('{"fail_at_stepp": 9}', "unknown key.*fail_at_stepp"),
    ('{"fail_at_step": "9"}', "fail_at_step must be an integer"),
    ('{"fail_at_step": 0}', "fail_at_step must be an integer >= 1"),
    ('{"heartbeat": "yes"}', "heartbeat must be true or false"),
    ('{"step_sleep_s": -1}', "step_sleep_s must be a number"),
    ('{"step_sleep_s": true}', "step_sleep_s must be a number"),
])
def test_a_bad_fault_request_is_named(value, needle, tmp_path):
    with pytest.raises(ConfigError, match=needle):
        faults_from_env(str(tmp_path), {FAULTS_ENV: value})


def test_the_config_has_no_test_knobs():
    with pytest.raises(Exception, match="fail_at_step"):
        TrainConfig.model_validate({"data": {"root": "unused"}, "run": {"fail_at_step": 9}})
    with pytest.raises(Exception, match="heartbeat"):
        TrainConfig.model_validate({"data": {"root": "unused"}, "run": {"heartbeat": True}})


def test_heartbeat_writes_pid_and_step_only_when_asked(tmp_path):
    on = faults_from_env(str(tmp_path), {FAULTS_ENV: '{"heartbeat": true}'})
    FaultHooks(on, rank=1, started_at_step=4, world_size=2).beat(7)
    beat = json.loads((tmp_path / "heartbeat" / "rank1.json").read_text())
    assert (beat["pid"], beat["step"], beat["started_at_step"], beat["world_size"]) == (os.getpid(), 7, 4, 2)
    FaultHooks(Faults(), rank=0, started_at_step=0, world_size=1).beat(7)
    assert not (tmp_path / "heartbeat" / "rank0.json").exists()


def test_step_sleep_stretches_each_step_of_every_rank(tmp_path):
    import time

    hooks = FaultHooks(Faults(step_sleep_s=0.2), rank=1, started_at_step=0, world_size=2)
    t = time.perf_counter()
    hooks.at_step(1)
    hooks.at_step(2)
    assert time.perf_counter() - t >= 0.4


def test_fail_at_step_kills_rank_zero_once(tmp_path):
    faults = faults_from_env(str(tmp_path), {FAULTS_ENV: '{"fail_at_step": 3}'})
    FaultHooks(faults, rank=1, started_at_step=0, world_size=2).at_step(3)  # rank 1: never
    assert not (tmp_path / "fault_injected").exists()
    pid = os.fork()
    if pid == 0:  # the child plays rank 0 and must die at step 3, not before
        hooks = FaultHooks(faults, rank=0, started_at_step=0, world_size=2)
        for step in (1, 2, 3, 4):
            hooks.at_step(step)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert (tmp_path / "fault_injected").read_text() == "killed at step 3\n"
    FaultHooks(faults, rank=0, started_at_step=3, world_size=2).at_step(3)  # the marker: not again
