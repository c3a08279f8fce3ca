"""A Ray head with GCS fault tolerance on a real ``redis-server``, for the GCS-loss chaos test.

The head is configured the way KubeRay's ``gcsFaultToleranceOptions`` configures a head pod:
``RAY_REDIS_ADDRESS`` (``host:port`` of an external Redis, read by ``ray start --head``) and
``RAY_external_storage_namespace`` (the key prefix in Redis that one cluster's GCS state lives
under) in the head's environment. Everything binds 127.0.0.1 on free ports; every process is
stopped by PID: Redis by its own, Ray's by the unique temp dir they name on their command line.

The head runs without ``--block``: with it, ``ray start`` stops every Ray process on the node
as soon as one dies (in a KubeRay pod, the container then restarts). Here the GCS alone is
killed and started again from its own command line, as a supervisor restarting the process
would, while the head's raylet, Serve's proxy and its replicas keep running.

The application is deployed and its status read by short driver processes
(``gcs_driver.py``), so that this test process never joins the cluster (the session's own
``ray.init`` cluster lives in it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from components.core.rayjobs import HEAD_PORTS, head_start_args
from components.tracking.server import free_port

RAY = str(Path(sys.executable).with_name("ray"))
DRIVER = Path(__file__).with_name("gcs_driver.py")
REPO = Path(__file__).resolve().parents[2]


def pids_naming(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (never this process)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


def stop_pids(pids: list[int], grace_s: float = 10.0) -> None:
    """SIGTERM ``pids``, then SIGKILL whichever is still there after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_state(p) not in "ZX" for p in pids):
            time.sleep(0.2)


class RedisServer:
    """``redis-server`` on a free loopback port, in memory only (no RDB, no AOF)."""

    def __init__(self, root: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed: `make test` installs it with "
                               "apt-get when run as root, or install it yourself "
                               "(apt-get install redis-server / brew install redis)")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = open(root / "redis.log", "wb")
        self.proc = subprocess.Popen(
            [exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(root)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while self.command("PING") != "+PONG":
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {(root / 'redis.log').read_text()[-800:]}")
            time.sleep(0.2)

    def command(self, line: str) -> str:
        """One inline command; the first line of the reply ('' when nothing answers)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
                conn.sendall(line.encode() + b"\r\n")
                return conn.makefile("rb").readline().decode().strip()
        except OSError:
            return ""

    def keys(self) -> list[str]:
        """Every key (a test's Redis holds only one cluster's few)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as conn:
            conn.sendall(b"KEYS *\r\n")
            reply = conn.makefile("rb")
            count = int(reply.readline()[1:])
            keys = []
            for _ in range(count):
                size = int(reply.readline()[1:])
                keys.append(reply.read(size + 2)[:-2].decode(errors="replace"))
            return keys

    def stop(self) -> None:
        stop_pids([self.proc.pid])
        self.proc.wait(timeout=10)
        self.log.close()


class FaultTolerantHead:
    """``ray start --head`` (token auth, as ``ray start`` turns on) whose GCS keeps its tables
    in ``redis`` under ``namespace``."""

    def __init__(self, redis: RedisServer, root: Path, *, namespace: str, num_cpus: int) -> None:
        self.root, self.namespace = root, namespace
        self.temp_dir = tempfile.mkdtemp(prefix="vp-gft-", dir="/tmp")  # short: socket paths
        ports = {name: free_port() for name in HEAD_PORTS}
        self.gcs = f"127.0.0.1:{ports['gcs']}"
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex,
                    "RAY_USAGE_STATS_ENABLED": "0",
                    # what KubeRay's gcsFaultToleranceOptions put into the head pod
                    "RAY_REDIS_ADDRESS": redis.address,
                    "RAY_external_storage_namespace": namespace,
                    "RAY_agent_register_timeout_ms": "180000",  # a loaded machine
                    "PYTHONPATH": os.pathsep.join(
                        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
        self.env.pop("RAY_ADDRESS", None)
        args = [a for a in head_start_args(ports, num_cpus=num_cpus,
                                           object_store_memory=300_000_000,
                                           temp_dir=self.temp_dir) if a != "--block"]
        done = subprocess.run([RAY, *args], env=self.env, capture_output=True, text=True,
                              timeout=300)
        (root / "ray-start.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start --head failed: {(done.stdout + done.stderr)[-1500:]}")
        self._gcs_cmdline: list[str] | None = None
        self._restarted: subprocess.Popen | None = None

    def gcs_pid(self) -> int | None:
        """The PID of this cluster's ``gcs_server`` (None while it is down)."""
        for pid in pids_naming(self.temp_dir):
            try:
                exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if exe.endswith(b"gcs_server"):
                return pid
        return None

    def kill_gcs(self) -> int:
        """SIGKILL this cluster's GCS; remembers its command line for :meth:`restart_gcs`."""
        pid = self.gcs_pid()
        assert pid is not None, "no gcs_server of this cluster is running"
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        self._gcs_cmdline = [a.decode() for a in raw.split(b"\0") if a]
        os.kill(pid, signal.SIGKILL)
        while _state(pid) not in "ZX":
            time.sleep(0.05)
        return pid

    def restart_gcs(self) -> int:
        """Start the GCS again with the command line it had (same port, same Redis and
        namespace): it reloads the cluster's tables from Redis and the raylet reconnects."""
        assert self._gcs_cmdline, "kill_gcs first"
        with open(self.root / "gcs-restarted.log", "ab") as log:
            self._restarted = subprocess.Popen(self._gcs_cmdline, env=self.env, stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True)
        return self._restarted.pid

    def driver(self, *args: str, timeout_s: float = 300) -> dict:
        """Run ``gcs_driver.py`` against this cluster; its last stdout line, as JSON."""
        done = subprocess.run([sys.executable, str(DRIVER), self.gcs, *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"gcs_driver {args[0]} failed (rc {done.returncode}): "
                               f"{(done.stdout + done.stderr)[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        stop_pids(pids_naming(self.temp_dir))
        if self._restarted is not None:
            self._restarted.wait(timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"
