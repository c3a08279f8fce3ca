"""Start and stop a real ``mlflow server`` on loopback (demo, tests, benchmarks).

SQLite backend store and a local artifact root, one web worker (``--workers 1``: the
default of 4 is too many for a 2-core machine). The process is ours: started in its own
process group and stopped by that group's id, nothing else is touched.

``app_name="basic-auth"`` turns on MLflow's basic auth: the server gets its own auth config
(``basic_auth.ini`` and ``basic_auth.db`` under ``root``, not in the working directory), an
admin user ``admin_username`` / ``admin_password`` created on first start, and a random Flask
secret key. Clients authenticate with ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``; requests without credentials get 401.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class MlflowServer:
    """A running ``mlflow server``: ``uri`` is its tracking URI."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 0
    app_name: str | None = None  # "basic-auth" turns on MLflow's basic auth
    env: dict[str, str] = field(default_factory=dict)
    admin_username: str = "admin"  # basic-auth only
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(16), repr=False)
    default_permission: str = "READ"  # basic-auth: what a new user may do by default
    process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 120.0) -> "MlflowServer":
        self.root = Path(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--host", self.host, "--port", str(self.port),
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--workers", "1",
        ]
        # vitpipe uses no MLflow server-side jobs: skip the job runner process (2 cores here).
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.env}
        if self.app_name:
            cmd += ["--app-name", self.app_name]
        if self.app_name == "basic-auth":
            env.update(self._basic_auth_env())
        log = open(self.root / "server.log", "ab")
        self.process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=env,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with code {self.process.returncode}; "
                    f"see {self.root / 'server.log'}"
                )
            try:
                if requests.get(f"{self.uri}/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"mlflow server did not answer on {self.uri} in {timeout_s:.0f}s")

    def _basic_auth_env(self) -> dict[str, str]:
        """Auth config and database under ``root``; the secret key is per server."""
        ini = self.root / "basic_auth.ini"
        ini.write_text(
            "[mlflow]\n"
            f"default_permission = {self.default_permission}\n"
            f"database_uri = sqlite:///{self.root / 'basic_auth.db'}\n"
            f"admin_username = {self.admin_username}\n"
            f"admin_password = {self.admin_password}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # One worker: caching a verified password (PBKDF2, slow by design) is safe here.
            "auth_cache_ttl_seconds = 60\n"
        )
        ini.chmod(0o600)
        return {
            "MLFLOW_AUTH_CONFIG_PATH": str(ini),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        }

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        pgid = os.getpgid(self.process.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
