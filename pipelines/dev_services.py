"""The local services of ``make demo``: an ``mlflow server`` and a Ray head on 127.0.0.1.

Dev tooling, not a pipeline stage: :class:`Services` starts each service in its own session
(process group) on free ports, records it in ``<workdir>/services.json`` so the next run
reuses it, and stops only the process groups it started, by PID.

    python -m pipelines.dev_services stop [--workdir .demo]

Ray auth: ``ray start --head`` turns on token authentication (Ray >= 2.52); the demo keeps
it on with a token of its own (``<workdir>/ray_auth_token``, made once, mode 0600) that the
head, the Ray CLI calls, the job's drivers and the Serve replicas all get through
``RAY_AUTH_MODE=token`` + ``RAY_AUTH_TOKEN_PATH``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from components.core.rayjobs import HEAD_PORTS, head_start_args, wait_for_job_agent
from components.tracking.server import free_port

REPO = Path(__file__).resolve().parent.parent


class ServiceError(RuntimeError):
    """A service did not start; the message says which and where its log is."""


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


# ----------------------------------------------------------------------------- processes
def _alive(pid: int | None) -> bool:
    """``pid`` runs (a zombie counts as gone; one that is our child is reaped)."""
    if not pid:
        return False
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _ours(pid: int, marker: str) -> bool:
    """The process ``pid`` is one this demo started (its command line names ``marker``)."""
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False


def stop_group(pid: int | None, marker: str, timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL, the process group that ``pid`` leads, if it is ours."""
    if not _alive(pid) or not _ours(pid, marker):
        return
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    if pgid != pid:  # we start every service as a session leader; anything else is not ours
        return
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    try:  # whatever of the group outlived its leader
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _alive(pid)  # reap


def use_demo_token(workdir: Path) -> Path:
    """Token auth with the demo's own token file (created once); exported to every child."""
    import secrets

    path = workdir / "ray_auth_token"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    return path


def ray_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the Ray CLI and the head: token auth on, this venv first on PATH."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    env.update(extra or {})
    return env


def ray_cli(*args: str) -> list[str]:
    exe = Path(sys.executable).parent / "ray"
    return [str(exe) if exe.exists() else "ray", *args]


def serve_cli(*args: str) -> list[str]:
    exe = Path(sys.executable).parent / "serve"
    return [str(exe) if exe.exists() else "serve", *args]


# ----------------------------------------------------------------------------- services
class Services:
    """The demo's MLflow server and Ray head, recorded in ``<workdir>/services.json``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.path = workdir / "services.json"
        self.state: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def save(self) -> None:
        self.path.write_text(json.dumps(self.state, indent=1))

    # MLflow ---------------------------------------------------------------------------
    def mlflow(self) -> str:
        rec = self.state.get("mlflow") or {}
        if rec and _alive(rec.get("pid")) and _healthy(f"{rec['uri']}/health"):
            say(f"reusing mlflow server at {rec['uri']}")
            return rec["uri"]
        if rec:
            stop_group(rec.get("pid"), "mlflow")
        from components.tracking.server import MlflowServer

        server = MlflowServer(root=self.workdir / "mlflow").start()
        self.state["mlflow"] = {"pid": server.process.pid, "uri": server.uri}
        self.save()
        say(f"started mlflow server at {server.uri} (pid {server.process.pid})")
        return server.uri

    # Ray ------------------------------------------------------------------------------
    def ray(self, *, num_cpus: int, object_store_memory: int, env_for_head: dict[str, str]) -> dict[str, Any]:
        rec = self.state.get("ray") or {}
        if rec and _alive(rec.get("pid")) and _answers(f"{rec['dashboard']}/api/version"):
            say(f"reusing Ray head at {rec['gcs_address']} (dashboard {rec['dashboard']})")
            return rec
        if rec:
            stop_group(rec.get("pid"), "ray")
        # Ray's socket paths must stay short: a temp dir named after this workdir.
        tag = hashlib.sha1(str(self.workdir.resolve()).encode()).hexdigest()[:8]
        temp_dir = Path(tempfile.gettempdir()) / f"vitpipe-ray-{tag}"
        ports = {name: free_port() for name in HEAD_PORTS}
        log = open(self.workdir / "ray-head.log", "ab")
        cmd = ray_cli(*head_start_args(ports, num_cpus=num_cpus, temp_dir=str(temp_dir),
                                       object_store_memory=object_store_memory))
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ray_env(env_for_head),
                                start_new_session=True, cwd=REPO)
        rec = {"pid": proc.pid, "gcs_address": f"127.0.0.1:{ports['gcs']}",
               "dashboard": f"http://127.0.0.1:{ports['dashboard']}", "temp_dir": str(temp_dir)}
        self.state["ray"] = rec
        self.state.pop("serve", None)
        self.save()
        deadline = time.monotonic() + 180
        while not _answers(f"{rec['dashboard']}/api/version"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ServiceError(f"the Ray head did not start; see {self.workdir / 'ray-head.log'}")
            time.sleep(1.0)
        try:  # the dashboard answers before its job agent is ready to take submissions
            wait_for_job_agent(ray_cli()[0], rec["dashboard"], env=ray_env())
        except (TimeoutError, RuntimeError) as err:
            raise ServiceError(f"the Ray head takes no jobs: {err}") from None
        say(f"started Ray head at {rec['gcs_address']} (dashboard {rec['dashboard']}, pid {proc.pid})")
        return rec

    def stop(self) -> None:
        for name, marker in (("ray", "ray"), ("mlflow", "mlflow")):
            rec = self.state.get(name) or {}
            if rec:
                stop_group(rec.get("pid"), marker)
                say(f"stopped {name} (process group {rec.get('pid')})")
        self.state = {}
        if self.path.exists():
            self.path.unlink()


def _healthy(url: str) -> bool:
    try:
        return requests.get(url, timeout=3).status_code == 200
    except requests.RequestException:
        return False


def _answers(url: str) -> bool:
    """The server at ``url`` answers HTTP (a 401 from Ray's token auth counts: it is up)."""
    try:
        return requests.get(url, timeout=3).status_code < 500
    except requests.RequestException:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.dev_services",
                                     description="stop the services a `make demo` run left running (KEEP=1)")
    parser.add_argument("command", choices=["stop"])
    parser.add_argument("--workdir", default=str(REPO / ".demo"))
    args = parser.parse_args(argv)
    Services(Path(args.workdir)).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
