"""Waiting for a fresh Ray head to accept job submissions.

``ray start --head`` answers ``ray job list`` before its dashboard agent has registered; a
``ray job submit`` in that window fails with HTTP 500 "No available agent to submit job"
(the head waits only 10 s for the agent, which a loaded machine can exceed). Nothing is
created by such a failed submission, so submitting a no-op job until one is accepted is a
safe readiness check. Used by ``make demo`` and the tests that start their own head.
"""

from __future__ import annotations

import subprocess
import time
import uuid

AGENT_NOT_READY = "No available agent to submit job"
# Every port a local head opens. Each must be free and its own: another Ray instance on this
# machine (a test session's ``ray.init``) already holds the defaults, e.g. the agent's 52365,
# and a second agent there dies, leaving the head with no job agent.
HEAD_PORTS = ("gcs", "dashboard", "client", "agent", "metrics")


def head_start_args(ports: dict[str, int], *, num_cpus: int, object_store_memory: int,
                    temp_dir: str) -> list[str]:
    """Arguments for ``ray start`` of a blocking head on 127.0.0.1 with a dashboard, on
    ``ports`` (one per name in :data:`HEAD_PORTS`)."""
    return [
        "start", "--head", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
        f"--port={ports['gcs']}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={ports['dashboard']}", f"--ray-client-server-port={ports['client']}",
        f"--dashboard-agent-listen-port={ports['agent']}", f"--metrics-export-port={ports['metrics']}",
        f"--num-cpus={num_cpus}", f"--object-store-memory={object_store_memory}", f"--temp-dir={temp_dir}",
    ]


def wait_for_job_agent(
    ray_exe: str, address: str, *, env: dict[str, str], timeout_s: float = 240.0
) -> None:
    """Block until ``address`` (the dashboard URL) accepts a job; raise TimeoutError if not."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        probe = [
            ray_exe, "job", "submit", "--address", address, "--no-wait",
            "--submission-id", f"vitpipe-agent-probe-{uuid.uuid4().hex[:8]}",
            "--entrypoint-num-cpus", "0", "--", "python", "-c", "pass",
        ]
        done = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=120)
        if done.returncode == 0:
            return
        last = (done.stdout + done.stderr)[-600:]
        if AGENT_NOT_READY not in last and "Connection refused" not in last:
            raise RuntimeError(f"ray job submit to {address} failed: {last}")
        time.sleep(2)
    raise TimeoutError(f"the Ray head at {address} accepted no job in {timeout_s:.0f}s: {last}")
