"""Elastic training: ``scaling.num_workers: [min, max]``.

Unit checks of the config and of the data position across a resize run in milliseconds. The
slow test runs a real two-node Ray cluster on loopback: a ``ray start --head`` and a second
``ray start --address`` node, each with its own temp dir and one ``elastic_slot`` (a custom
resource the training workers ask for, so there is one worker per node). The run starts with
one worker on the head; the test starts the second node (Ray Train grows the worker group to
two, restarting from the latest checkpoint), then stops that node by its process group and
the PIDs naming its temp dir. ``ray start`` drains its node on SIGTERM with reason
"preemption", as a spot reclaim or a Kubernetes pod deletion does: the workers write a
checkpoint at the step they reached and Ray Train goes on with one worker. MLflow (the
session's real server) must then hold every step exactly once, with the world size the
workers logged going 1 → 2 → 1.

Each step reports a checkpoint, and rank 0 logs a step to MLflow once Ray Train's controller
has registered its checkpoint (it polls every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, 0.5 s
here): a heartbeat at step k means step k - 1 is committed. The one-worker group is paused
(SIGSTOP) from when the second node starts until Ray Train has replaced it with two workers,
so the steps trained before the resize do not depend on how long a node takes to start.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from components.core.config import ConfigError
from components.core.rayjobs import HEAD_PORTS, head_start_args
from components.tracking.server import free_port
from components.training.config import ScalingSection, TrainConfig, load_train_config, micro_batches_per_step
from components.training.loop import resume_position
from components.training.state import Progress
from tests.training.conftest import CONFIGS, read_heartbeat
from tests.training.test_job_submit import RAY, _stop

REPO = Path(__file__).resolve().parents[2]
SLOT = "elastic_slot"  # one per node: a training worker needs one


# ------------------------------------------------------------------------- config + position
@pytest.mark.parametrize("value, expected", [("3", 3), ("[1,2]", (1, 2)), ("[2,2]", (2, 2))])
def test_num_workers_takes_an_int_or_a_range(value, expected):
    cfg = load_train_config(CONFIGS / "pretrain_ci.yaml", [f"scaling.num_workers={value}"])
    assert cfg.scaling.num_workers == expected
    assert (cfg.scaling.min_workers, cfg.scaling.max_workers) == (
        expected if isinstance(expected, tuple) else (expected, expected))
    assert cfg.scaling.elastic is isinstance(expected, tuple)
    # The workers get the config as JSON and validate it again.
    again = TrainConfig.model_validate(cfg.model_dump(mode="json"))
    assert again.scaling.num_workers == expected


@pytest.mark.parametrize("value, message", [
    ("[2,1]", r"1 <= min <= max"), ("[0,2]", r"1 <= min <= max"), ("[1,2,3]", r"\[min, max\]"),
    ("0", r">= 1"), ("[1,two]", r"int or \[min, max\]"), ("true", r"int or \[min, max\]"),
    ("[2,4]", r"3 worker\(s\) cannot share evenly; set optim.grad_accum_steps=3"),
])
def test_a_bad_range_is_one_clear_config_error(value, message):
    with pytest.raises(ConfigError, match=r"scaling\.num_workers") as err:
        load_train_config(CONFIGS / "pretrain_ci.yaml", [f"scaling.num_workers={value}"])
    assert err.match(message)


def test_the_global_batch_is_the_same_at_every_size():
    scaling = ScalingSection(num_workers=[2, 4])
    # grad_accum_steps 3 × max 4 = 12 micro-batches per optimizer step, however many workers.
    assert {w: micro_batches_per_step(scaling, 3, w) * w for w in (2, 3, 4)} == {2: 12, 3: 12, 4: 12}
    assert micro_batches_per_step(ScalingSection(num_workers=2), 1, 2) == 1  # fixed size: as before
    with pytest.raises(ValueError):
        micro_batches_per_step(scaling, 1, 3)


def test_resume_position_keeps_the_step_when_the_size_changes():
    cfg = TrainConfig(scaling={"num_workers": [1, 4]}, optim={"grad_accum_steps": 3})
    # 5 steps into the epoch with 4 workers (3 micro-batches each per step) ...
    at = Progress(global_step=17, epoch=1, batch_in_epoch=15, world_size=4)
    # ... is 5 steps of 12 micro-batches with one worker, 5 of 6 with two, unchanged with four.
    assert resume_position(at, cfg, 1) == 60
    assert resume_position(at, cfg, 2) == 30
    assert resume_position(at, cfg, 4) == 15
    legacy = Progress(global_step=17, epoch=1, batch_in_epoch=15)  # written before world_size
    assert resume_position(legacy, cfg, 2) == 15


# ---------------------------------------------------------------------- the two-node cluster
class _Cluster:
    """A ``ray start --head`` and, on demand, a second node; everything on 127.0.0.1."""

    def __init__(self, env: dict[str, str], root: Path):
        self.env, self.root = env, root
        self.head_dir = tempfile.mkdtemp(prefix="vp-eh-", dir="/tmp")  # short: socket paths
        ports = {name: free_port() for name in HEAD_PORTS}
        self.gcs = f"127.0.0.1:{ports['gcs']}"
        args = head_start_args(ports, num_cpus=2, object_store_memory=300_000_000, temp_dir=self.head_dir)
        # The head is only ever stopped at the end: no drain then.
        self.head = self._start(args + [f"--resources={json.dumps({SLOT: 1})}"], "head",
                                RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
        self.node_dir: str | None = None
        self.node: subprocess.Popen | None = None

    def _start(self, args: list[str], name: str, **env: str) -> subprocess.Popen:
        log = open(self.root / f"ray-{name}.log", "wb")
        return subprocess.Popen([RAY, *args], env={**self.env, **env}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def wait_nodes(self, count: int, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        out = ""
        while time.monotonic() < deadline:
            done = subprocess.run([RAY, "status", f"--address={self.gcs}"], env=self.env,
                                  capture_output=True, text=True, timeout=60)
            out = done.stdout + done.stderr
            if done.returncode == 0 and out.count(f"{SLOT}") and _active_nodes(out) == count:
                return
            time.sleep(2)
        raise TimeoutError(f"the cluster did not reach {count} node(s): {out[-1500:]}")

    def start_second_node(self) -> None:
        self.node_dir = tempfile.mkdtemp(prefix="vp-en-", dir="/tmp")
        args = ["start", f"--address={self.gcs}", "--block", "--disable-usage-stats",
                "--node-ip-address=127.0.0.1", "--num-cpus=0", f"--resources={json.dumps({SLOT: 1})}",
                "--object-store-memory=100000000", f"--temp-dir={self.node_dir}",
                f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                f"--metrics-export-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
        self.node = self._start(args, "node2")

    def stop_second_node(self) -> None:
        if self.node is not None:
            _stop(self.node, self.node_dir)
            self.node = None

    def close(self) -> None:
        self.stop_second_node()
        _stop(self.head, self.head_dir)
        for path in (self.head_dir, self.node_dir):
            if path:
                shutil.rmtree(path, ignore_errors=True)


def _active_nodes(status: str) -> int:
    """Alive nodes in ``ray status`` output: the lines under "Active:" up to "Pending:"."""
    lines = status.split("Active:", 1)[-1].split("Pending:", 1)[0].splitlines()
    return sum(1 for line in lines if line.strip().startswith("1 node_"))


@contextlib.contextmanager
def _paused(pid: int):
    """The process ``pid`` (a training worker, never this one) stopped for the block."""
    assert pid != os.getpid()
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):  # Ray Train may have ended it meanwhile
            os.kill(pid, signal.SIGCONT)


def _wait_beat(path: Path, driver: subprocess.Popen, what: str, ok, timeout_s: float = 240) -> dict:
    deadline = time.monotonic() + timeout_s
    beat = None
    while time.monotonic() < deadline:
        beat = read_heartbeat(path)
        if beat and ok(beat):
            return beat
        if driver.poll() is not None:
            raise AssertionError(f"the run ended (rc {driver.returncode}) before {what}; last beat {beat}")
        time.sleep(0.2)
    raise TimeoutError(f"no heartbeat showed {what} in {timeout_s:.0f}s; last beat {beat}")


@pytest.mark.slow
def test_a_run_grows_to_a_joining_node_and_shrinks_when_it_leaves(mlflow_server, synth_dataset, tmp_path):
    from mlflow.tracking import MlflowClient

    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex,
           "RAY_USAGE_STATS_ENABLED": "0",
           # A loaded machine can take longer than the raylet's 30 s to start a node's agent.
           "RAY_agent_register_timeout_ms": "180000",
           # SIGTERM drains a node (reason: preemption) for up to this long before it stops.
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "20",
           # Read by Ray Train's controller (on the head, from the node's environment): wait
           # 5 s, not 30, for a paused or lost worker to leave its process group on a resize.
           "TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S": "5",
           "PYTHONPATH": os.pathsep.join(
               p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    env.pop("RAY_ADDRESS", None)
    cluster = _Cluster(env, tmp_path)
    storage, name = tmp_path / "runs", "elastic"
    heartbeat = storage / name / "heartbeat" / "rank0.json"
    driver = None
    try:
        cluster.wait_nodes(1)
        # Each step reports a checkpoint, registered by the controller at its next poll: a
        # resize retrains at most the step or two after the last registered one.
        overrides = [
            f"data.root={synth_dataset}", f"run.storage_path={storage}", f"run.name={name}",
            "scaling.num_workers=[1,2]", "scaling.resize_interval_s=1", "scaling.torch_threads=1",
            f"scaling.resources_per_worker={{CPU: 0, {SLOT}: 1}}",
            "batch_size=2", "epochs=100", "max_steps=24", "eval.every_n_epochs=1000",
            "checkpoint.every_n_steps=1", "run.log_every_n_steps=1", "run.max_failures=4",
            "run.heartbeat=true", "run.progress_every_s=0",
            "mlflow.enabled=true", f"mlflow.tracking_uri={mlflow_server.uri}",
            "mlflow.experiment=training-elastic",
        ]
        # Ray Train's knobs (the driver passes them on to its controller and workers): poll
        # the workers every 0.5 s; give up on a worker group that cannot start in 30 s (a
        # node that just left can still look available).
        driver_env = {**env, "RAY_ADDRESS": cluster.gcs, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
                      "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "30", "RAY_DEDUP_LOGS": "0",
                      "VITPIPE_PROGRESS": "every"}  # a progress line per report, not every 10 s
        driver_log = tmp_path / "driver.log"
        driver = subprocess.Popen(
            [sys.executable, "-m", "pipelines.pretrain", "--config", str(CONFIGS / "pretrain_ci.yaml"),
             *overrides], env=driver_env, cwd=REPO, stdout=open(driver_log, "wb"), stderr=subprocess.STDOUT)

        one = _wait_beat(heartbeat, driver, "one worker training",
                         lambda b: b["world_size"] == 1 and b["step"] >= 3)
        with _paused(one["pid"]):
            cluster.start_second_node()
            grown_beat = _wait_beat(heartbeat, driver, "two workers training", lambda b: b["world_size"] == 2)
        two = _wait_beat(heartbeat, driver, "two workers training for 3 steps",
                         lambda b: b["world_size"] == 2 and b["step"] >= b["started_at_step"] + 3)
        assert (storage / name / "heartbeat" / "rank1.json").is_file()
        cluster.stop_second_node()
        again = _wait_beat(heartbeat, driver, "one worker again after the node left",
                           lambda b: b["world_size"] == 1 and b["started_at_step"] >= two["step"] - 1
                           and b["step"] >= b["started_at_step"] + 2)
        driver.wait(timeout=300)
        out = driver_log.read_text()
        assert driver.returncode == 0, out[-4000:]
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)
        cluster.close()

    summary = json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("{")))
    total = summary["steps"]
    assert total == 24
    # Each size began where the previous one had committed its last step: the paused
    # one-worker group had reached one["step"] (so committed at least one["step"] - 1).
    assert one["started_at_step"] == 0
    assert one["step"] - 1 <= two["started_at_step"] == grown_beat["started_at_step"] <= one["step"]
    assert two["started_at_step"] < again["started_at_step"] < total

    # The run's reports, as the controller registered them (one progress line each): every
    # step once, in order, across the three worker groups.
    reported = [int(m) for m in re.findall(rf"\[{name}\] step (\d+)/{total}", out)]
    assert reported == list(range(1, total + 1)), reported

    client = MlflowClient(mlflow_server.uri)
    run_id = summary["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "FINISHED"
    experiment = client.get_experiment_by_name("training-elastic")
    assert len(client.search_runs([experiment.experiment_id])) == 1  # one MLflow run throughout
    loss_steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert sorted(loss_steps) == list(range(1, total + 1)), loss_steps  # each step exactly once
    sizes = sorted((m.step, int(m.value)) for m in client.get_metric_history(run_id, "world_size"))
    assert [s for s, _ in sizes] == list(range(1, total + 1))
    runs = [w for i, (_, w) in enumerate(sizes) if i == 0 or sizes[i - 1][1] != w]
    assert runs == [1, 2, 1], sizes
    grown = next(s for s, w in sizes if w == 2)
    shrunk = next(s for s, w in sizes if w == 1 and s > grown)
    # The new size's first step follows the checkpoint it restarted from.
    assert grown == two["started_at_step"] + 1 and shrunk == again["started_at_step"] + 1

    # The final checkpoint: the whole plan at one global batch (2 × 1 × max 2), whatever the size.
    state = json.loads((Path(summary["checkpoint"]) / "train_state.json").read_text())["progress"]
    assert state["global_step"] == total and state["world_size"] == 1
    assert state["samples_seen"] == total * 4
