"""MLflow for a training run: one run owned by the driver, metrics from rank 0.

- :func:`check_tracking_server`: an unreachable server is one clear error before training.
- :func:`open_run`: creates the run, or reopens the one whose id the run record (beside the
  checkpoints, see ``storage.RUN_RECORD``) names, so a resubmitted/restarted run logs into
  the same MLflow run.
- :class:`MetricLogger`: buffers metrics against the global step and sends them only when
  the checkpoint covering those steps is committed (``flush(up_to_step)``); steps at or
  below the last flushed step are dropped, so a restart never logs a step twice. Transient
  failures are retried with backoff and never raised into the training loop.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class TrackingError(RuntimeError):
    """The tracking server cannot be used (unreachable at start, bad URI)."""


def check_tracking_server(uri: str, timeout_s: float = 10.0) -> None:
    """Fail fast and clearly when an http(s) tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        response = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
    except requests.RequestException as err:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({type(err).__name__}); start it or "
            "set mlflow.tracking_uri / MLFLOW_TRACKING_URI (or mlflow.enabled=false)"
        ) from None
    if response.status_code >= 400:
        raise TrackingError(f"MLflow tracking server {uri} answered {response.status_code} on /health")


def retry(fn: Callable[[], T], *, attempts: int, what: str, base_delay_s: float = 0.5
          ) -> tuple[bool, T | None]:
    """Call ``fn`` up to ``attempts + 1`` times with exponential backoff.

    Returns ``(True, result)``, or ``(False, None)`` when every attempt failed (logged, not
    raised: a tracking hiccup must never kill training).
    """
    for attempt in range(attempts + 1):
        try:
            return True, fn()
        except Exception as err:  # network, 5xx, throttling: never fatal for training
            if attempt == attempts:
                log.warning("MLflow %s failed after %d attempts: %s", what, attempts + 1, err)
                return False, None
            time.sleep(min(8.0, base_delay_s * 2 ** attempt))
    return False, None


def open_run(uri: str, experiment: str, run_name: str, existing_run_id: str | None,
             tags: dict[str, str] | None = None) -> str:
    """The MLflow run id for this pipeline run: ``existing_run_id`` reopened, or a new run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    if existing_run_id:
        try:
            run = client.get_run(existing_run_id)
        except Exception as err:
            raise TrackingError(
                f"run record names MLflow run {existing_run_id}, which {uri} does not have "
                f"({err}); use a new run.name or delete the run record"
            ) from None
        if run.info.status != "RUNNING":
            client.update_run(existing_run_id, status="RUNNING")
        return existing_run_id
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name=run_name, tags=tags or {})
    return run.info.run_id


def last_logged_step(uri: str, run_id: str, key: str) -> int:
    """The highest step of metric ``key`` already in the run (-1 when none)."""
    from mlflow.tracking import MlflowClient

    _, history = retry(lambda: MlflowClient(uri).get_metric_history(run_id, key), attempts=3,
                       what="get_metric_history")
    history = history or []
    return max((m.step for m in history), default=-1)


class MetricLogger:
    """Rank-0 metric sink bound to one MLflow run (see module docstring)."""

    def __init__(self, uri: str | None, run_id: str | None, *, max_retries: int = 5,
                 last_step: int = -1) -> None:
        self.uri, self.run_id, self.max_retries = uri, run_id, max_retries
        self.last_flushed_step = last_step
        self._pending: list[tuple[int, dict[str, float], int]] = []

    @property
    def enabled(self) -> bool:
        return bool(self.uri and self.run_id)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled and step > self.last_flushed_step:
            self._pending.append((step, dict(metrics), int(time.time() * 1000)))

    def flush(self, up_to_step: int | None = None) -> int:
        """Send buffered metrics with step ≤ ``up_to_step`` (all when None); returns how many."""
        if not self.enabled or not self._pending:
            return 0
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        ready = [p for p in self._pending if up_to_step is None or p[0] <= up_to_step]
        if not ready:
            return 0
        metrics = [Metric(k, float(v), ts, step) for step, values, ts in ready
                   for k, v in values.items() if step > self.last_flushed_step]
        client = MlflowClient(self.uri)
        sent = 0
        for start in range(0, len(metrics), 900):  # MLflow's log_batch limit is 1000
            chunk = metrics[start:start + 900]
            ok, _ = retry(lambda: client.log_batch(self.run_id, metrics=chunk),
                          attempts=self.max_retries, what="log_batch")
            if not ok:
                # Keep what failed for the next flush; training goes on.
                return sent
            sent += len(chunk)
        self._pending = [p for p in self._pending if p not in ready]
        self.last_flushed_step = max(self.last_flushed_step, max(p[0] for p in ready))
        return sent

    def drop_unflushed(self) -> None:
        self._pending.clear()


def log_params_safely(uri: str, run_id: str, params: dict[str, Any], *, attempts: int = 5) -> None:
    """Log params, skipping keys already logged (a resumed run must not change params)."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    _, run = retry(lambda: client.get_run(run_id), attempts=attempts, what="get_run")
    existing = run.data.params if run else {}
    new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
    for start in range(0, len(new), 90):  # log_batch takes at most 100 params
        chunk = new[start:start + 90]
        retry(lambda: client.log_batch(run_id, params=chunk), attempts=attempts, what="log params")


def system_info() -> dict[str, str]:
    import os
    import platform

    import ray
    import torch

    from components.core.device import cpu_has_fast_bf16

    info = {
        "sys.python": platform.python_version(),
        "sys.platform": platform.platform(),
        "sys.cpu_count": str(os.cpu_count()),
        "sys.torch": torch.__version__,
        "sys.ray": ray.__version__,
        "sys.cpu_fast_bf16": str(cpu_has_fast_bf16()),
        "sys.cuda_available": str(torch.cuda.is_available()),
    }
    if torch.cuda.is_available():
        info["sys.gpu"] = torch.cuda.get_device_name(0)
    return info
