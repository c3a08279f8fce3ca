"""``ray job submit`` of ``pipelines.pretrain`` against a ``ray start --head`` cluster that this
test starts itself: its own ports, its own temp dir, token authentication with a token of
its own (``RAY_AUTH_MODE=token`` + ``RAY_AUTH_TOKEN``, so ``~/.ray/auth_token`` is neither
read nor written). It is stopped by its process group and by the PIDs whose command line
names its unique temp dir — never ``ray stop``, which would stop other clusters here too.
It does not collide with the session's in-process ``ray_cluster`` (different GCS port and
temp dir; ``RAY_ADDRESS`` is only set for the CLI subprocesses).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from components.core.rayjobs import HEAD_PORTS, head_start_args, wait_for_job_agent

from components.tracking.server import free_port

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def _stop(proc: subprocess.Popen, temp_dir: str) -> None:
    try:
        os.killpg(os.getpgid(proc.pid), signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:  # `ray start --block` outlives a SIGTERM to its group for longer than this
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
    # Ray daemons that left the group still name our unique temp dir on their command line.
    mine = [pid for pid in _pids_naming(temp_dir) if pid != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in mine:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in mine):
            time.sleep(0.5)


def _pids_naming(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.fixture()
def head_cluster():
    temp_dir = tempfile.mkdtemp(prefix="vp-ray-", dir="/tmp")  # short: Ray's socket paths
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex,
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    ports = {name: free_port() for name in HEAD_PORTS}  # all free and our own (see HEAD_PORTS)
    dashboard = ports["dashboard"]
    log = open(Path(temp_dir) / "ray-start.log", "wb")
    proc = subprocess.Popen(
        [RAY, *head_start_args(ports, num_cpus=3, object_store_memory=400_000_000, temp_dir=temp_dir)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 180
        while True:
            done = subprocess.run([RAY, "job", "list", "--address", address], env=env,
                                  capture_output=True, text=True, timeout=60)
            if done.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("ray start --head did not come up: "
                                   + (Path(temp_dir) / "ray-start.log").read_text()[-2000:])
            time.sleep(2)
        try:  # `job list` answers before the agent is up
            wait_for_job_agent(RAY, address, env=env)
        except TimeoutError as err:
            agent_log = Path(temp_dir) / "session_latest" / "logs" / "dashboard_agent.log"
            tail = agent_log.read_text()[-2000:] if agent_log.exists() else "(no agent log)"
            raise TimeoutError(f"{err}\n--- dashboard_agent.log ---\n{tail}") from None
        yield address, env
    finally:
        _stop(proc, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_ray_job_submit_pretrain(head_cluster, synth_dataset, tmp_path):
    address, env = head_cluster
    storage = tmp_path / "runs"
    cmd = [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO), "--",
           sys.executable, "-m", "pipelines.pretrain", "--config", "pipelines/configs/pretrain_ci.yaml",
           f"data.root={synth_dataset}", f"run.storage_path={storage}", "run.name=submitted",
           "max_steps=3", "epochs=1", "eval.batch_size=16"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "succeeded" in out.lower()
    summary = json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("{")))
    assert summary["run_name"] == "submitted" and summary["steps"] == 3
    assert Path(summary["checkpoint"]).is_relative_to(storage)
    assert (Path(summary["checkpoint"]) / "model.safetensors").is_file()
    assert 0.0 <= summary["metrics"]["top1"] <= 1.0
