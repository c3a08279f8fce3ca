"""MLflow for a training run: one run owned by the driver, metrics from rank 0.

- :func:`check_tracking_server`: an unreachable server is one clear error before training.
- :func:`open_run`: creates the run, or reopens the one whose id the run record (beside the
  checkpoints, see ``storage.RUN_RECORD``) names, so a resubmitted/restarted run logs into
  the same MLflow run.
- :class:`MetricLogger`: buffers metrics against the global step and sends them only when
  the checkpoint covering those steps is committed (``flush(up_to_step)``); steps at or
  below the last flushed step are dropped, so a restart never logs a step twice. A
  background thread sends them: a tracking server that is away neither blocks nor fails
  the training loop, and what was logged meanwhile reaches it, in step order and once,
  when it is back.
"""

from __future__ import annotations

import logging
import os
import threading
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
    """Rank-0 metric sink bound to one MLflow run (see module docstring).

    ``log`` and ``flush`` never block on the network: ``flush(up_to_step)`` hands the
    committed steps to a background sender thread, which sends them in step order (batches
    of at most 900 metrics) and, while the server is away, retries with a delay doubling
    from 0.5 s to ``0.5 * 2**max_retries`` s. Every ``(key, step)`` reaches MLflow at most
    once: a batch whose request failed may still have been applied (a timeout after the
    server wrote it), so before sending it again the sender reads the keys' history and
    drops what the run already holds. At most ``buffer_steps`` steps wait; past that the
    oldest are dropped and counted (a warning says how many). :meth:`close` waits up to
    ``drain_timeout_s`` for the rest to be sent.
    """

    def __init__(self, uri: str | None, run_id: str | None, *, max_retries: int = 5,
                 last_step: int = -1, buffer_steps: int = 10000, drain_timeout_s: float = 300.0,
                 request_timeout_s: float = 10.0) -> None:
        self.uri, self.run_id, self.max_retries = uri, run_id, max_retries
        self.buffer_steps, self.drain_timeout_s = buffer_steps, drain_timeout_s
        self.request_timeout_s = request_timeout_s
        self.last_flushed_step = last_step  # the last step handed to the sender
        self._pending: list[tuple[int, dict[str, float], int]] = []
        self._queue: list[tuple[int, dict[str, float], int]] = []  # committed, not yet sent
        self._cond = threading.Condition()
        self._sending, self._inflight = False, 0
        self._inflight = 0  # steps in the batch being sent
        self._closed = False
        self._thread: threading.Thread | None = None
        self.sent = 0  # metrics MLflow accepted
        self.dropped = 0  # metrics dropped because the buffer was full
        self.failures = 0  # failed send attempts
        self.retry_seconds = 0.0  # time the sender spent waiting between attempts

    @property
    def enabled(self) -> bool:
        return bool(self.uri and self.run_id)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled and step > self.last_flushed_step:
            self._pending.append((step, dict(metrics), int(time.time() * 1000)))

    def flush(self, up_to_step: int | None = None) -> int:
        """Hand buffered metrics with step ≤ ``up_to_step`` (all when None) to the sender;
        returns how many metrics were queued. Never blocks on MLflow."""
        if not self.enabled or not self._pending:
            return 0
        ready = [p for p in self._pending if up_to_step is None or p[0] <= up_to_step]
        if not ready:
            return 0
        self._pending = [p for p in self._pending if not (up_to_step is None or p[0] <= up_to_step)]
        ready = [p for p in ready if p[0] > self.last_flushed_step]
        if not ready:
            return 0
        self.last_flushed_step = max(self.last_flushed_step, max(p[0] for p in ready))
        with self._cond:
            self._queue.extend(ready)
            self._queue.sort(key=lambda p: p[0])
            overflow = len({p[0] for p in self._queue}) + self._inflight - self.buffer_steps
            if overflow > 0:
                oldest = sorted({p[0] for p in self._queue})[:overflow]
                lost = [p for p in self._queue if p[0] in set(oldest)]
                self._queue = [p for p in self._queue if p[0] not in set(oldest)]
                self.dropped += sum(len(p[1]) for p in lost)
                log.warning("MLflow unreachable and %d steps buffered: dropped steps %d-%d (%d metrics "
                            "dropped so far)", self.buffer_steps, oldest[0], oldest[-1], self.dropped)
            self._cond.notify_all()
        self._start()
        return sum(len(p[1]) for p in ready)

    def drop_unflushed(self) -> None:
        self._pending.clear()

    def backlog(self) -> int:
        """Steps queued or being sent."""
        with self._cond:
            return len(self._queue) + self._inflight

    def close(self, timeout_s: float | None = None) -> bool:
        """Queue what is left, wait up to ``timeout_s`` (``drain_timeout_s``) for the sender
        to send it all; returns whether everything was sent."""
        self._closed = False  # closing again (the server came back) sends what is left
        self.flush()
        if self._queue:
            self._start()
        timeout_s = self.drain_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while (self._queue or self._sending) and self._thread is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 1.0))
            unsent = sum(len(p[1]) for p in self._queue)
            self._closed = True
            self._cond.notify_all()
        if unsent:
            log.warning("MLflow: %d metrics not sent within %.0f s at the end of training", unsent, timeout_s)
        return unsent == 0

    # -- the sender thread -------------------------------------------------------------
    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            _fail_fast_http(self.request_timeout_s)
            self._thread = threading.Thread(target=self._run, name="mlflow-metrics", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        from mlflow.tracking import MlflowClient

        delay, cap = 0.5, 0.5 * 2 ** self.max_retries
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait(1.0)
                if not self._queue:
                    return
                # Whole steps, in order, up to 900 metrics (log_batch takes 1000).
                batch, size = [], 0
                while self._queue and (not batch or size + len(self._queue[0][1]) <= 900):
                    entry = self._queue.pop(0)
                    batch.append(entry)
                    size += len(entry[1])
                self._sending, self._inflight = True, len(batch)
            try:
                self._send(MlflowClient(self.uri), batch)
                delay = 0.5
                with self._cond:
                    self._sending, self._inflight = False, 0
                    self._cond.notify_all()
            except Exception as err:  # network, 5xx: keep the batch, wait, try again
                if _rejected(err):  # the server answered that this batch is wrong: not retried
                    log.error("MLflow rejected metrics of steps %d-%d, dropped: %s", batch[0][0], batch[-1][0], err)
                    self.dropped += sum(len(p[1]) for p in batch)
                    self._maybe_applied = False
                    with self._cond:
                        self._sending, self._inflight = False, 0
                        self._cond.notify_all()
                    continue
                self.failures += 1
                if self.failures == 1 or self.failures % 10 == 0:
                    log.warning("MLflow log_batch failed (%d failures so far), retrying in %.1f s: %s",
                                self.failures, delay, err)
                with self._cond:
                    self._queue[:0] = batch
                    self._sending, self._inflight = False, 0
                    self._cond.notify_all()
                    if self._closed:
                        return
                    t0 = time.monotonic()
                    while not self._closed and time.monotonic() - t0 < delay:  # close() ends it early
                        self._cond.wait(delay - (time.monotonic() - t0))
                    self.retry_seconds += time.monotonic() - t0
                delay = min(cap, delay * 2)

    def _send(self, client, batch: list[tuple[int, dict[str, float], int]]) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(k, float(v), ts, step) for step, values, ts in batch for k, v in values.items()]
        if self._maybe_applied:
            # The last failed request may have been applied: send only what the run lacks.
            keys = {m.key for m in metrics}
            have = {(m.key, m.step) for key in keys for m in client.get_metric_history(self.run_id, key)}
            metrics = [m for m in metrics if (m.key, m.step) not in have]
        self._maybe_applied = True
        if metrics:
            client.log_batch(self.run_id, metrics=metrics)
        self._maybe_applied = False
        self.sent += len(metrics)

    _maybe_applied = False


def _rejected(err: Exception) -> bool:
    """A 4xx answer other than 429: sending the same batch again cannot succeed."""
    code = getattr(err, "get_http_status_code", lambda: None)()
    return isinstance(code, int) and 400 <= code < 500 and code != 429


def _fail_fast_http(timeout_s: float) -> None:
    """MLflow's client retries a request for minutes by default; the sender does its own
    retrying, so each request of this process fails fast instead (a user's setting wins)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(1, timeout_s))))


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
