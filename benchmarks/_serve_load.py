"""Load for a Serve application, shared by ``bench_autoscale.py`` and ``tests/chaos/``.

- :class:`Callers`: closed-loop HTTP callers (one thread each, a ``requests.Session``)
  whose number can change while they run (a load ramp); every answer is recorded with its
  time, latency, status and, for a refusal, its ``code`` and ``Retry-After``.
- :class:`ReplicaSampler`: the deployment's RUNNING replicas over time, from Serve's
  status API (``serve.status()``), on a background thread.
- :func:`summarize`: count, failures, statuses, p50/p99 latency and throughput of a window.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import requests


@dataclass(frozen=True)
class Answer:
    """One request: ``t`` its start (s, monotonic), ``status`` 0 when no HTTP answer came."""

    t: float
    latency_s: float
    status: int
    code: str | None = None
    retry_after: str | None = None
    error: str | None = None


class Callers:
    """Up to ``max_callers`` closed-loop callers posting ``body`` to ``url``; ``set(n)``
    makes the first ``n`` of them call (the others wait). Bounded: ``stop()`` ends them all."""

    def __init__(self, url: str, body: bytes, headers: dict[str, str], *,
                 max_callers: int = 32, timeout_s: float = 60.0) -> None:
        self.url, self.body, self.headers, self.timeout_s = url, body, headers, timeout_s
        self.answers: list[Answer] = []
        self._active = 0
        self._stopped = False
        self._changed = threading.Condition()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True,
                                          name=f"caller-{i}") for i in range(max_callers)]
        for thread in self._threads:
            thread.start()

    def set(self, callers: int) -> None:
        with self._changed:
            self._active = min(callers, len(self._threads))
            self._changed.notify_all()

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 5)

    def __enter__(self) -> Callers:
        return self

    def __exit__(self, *_) -> None:
        self.stop()

    def _run(self, index: int) -> None:
        session = requests.Session()
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._stopped or index < self._active)
                if self._stopped:
                    break
            self.answers.append(self._post(session))
        session.close()

    def _post(self, session: requests.Session) -> Answer:
        start = time.monotonic()
        try:
            resp = session.post(self.url, data=self.body, headers=self.headers,
                                timeout=self.timeout_s)
        except requests.RequestException as err:
            return Answer(start, time.monotonic() - start, 0, error=type(err).__name__)
        latency = time.monotonic() - start
        if resp.status_code == 200:
            return Answer(start, latency, 200)
        try:
            code = resp.json().get("code")
        except ValueError:
            code = None
        return Answer(start, latency, resp.status_code, code, resp.headers.get("Retry-After"),
                      resp.text[:300])


def replica_states(app: str, deployment: str) -> dict[str, int]:
    """Replicas of ``app``/``deployment`` per state now (Serve's status API)."""
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or deployment not in status.deployments:
        return {}
    states = status.deployments[deployment].replica_states.items()
    return {str(getattr(k, "value", k)): int(v) for k, v in states if v}


def running_replicas(app: str, deployment: str) -> int:
    """RUNNING replicas of ``app``/``deployment`` now."""
    return replica_states(app, deployment).get("RUNNING", 0)


class ReplicaSampler:
    """``samples``: ``(t monotonic, RUNNING replicas)`` every ``interval_s`` until ``stop()``;
    ``starting``: ``(t, replicas STARTING)`` at the same times (asked for, not serving yet)."""

    def __init__(self, app: str, deployment: str, interval_s: float = 0.5) -> None:
        self.app, self.deployment, self.interval_s = app, deployment, interval_s
        self.samples: list[tuple[float, int]] = []
        self.starting: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="replica-sampler")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            now, states = time.monotonic(), replica_states(self.app, self.deployment)
            self.samples.append((now, states.get("RUNNING", 0)))
            self.starting.append((now, states.get("STARTING", 0)))
            self._stop.wait(self.interval_s)

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        self._thread.join(timeout=30)
        return self.samples


def summarize(answers: list[Answer], start: float | None = None,
              end: float | None = None) -> dict:
    """Answers started in ``[start, end)``: counts, statuses, p50/p99 of the 200s, req/s."""
    window = [a for a in answers if (start is None or a.t >= start) and (end is None or a.t < end)]
    ok = [a.latency_s for a in window if a.status == 200]
    statuses: dict[str, int] = {}
    for answer in window:
        statuses[str(answer.status)] = statuses.get(str(answer.status), 0) + 1
    span = ((end if end is not None else max((a.t + a.latency_s for a in window), default=0))
            - (start if start is not None else min((a.t for a in window), default=0)))
    ms = np.asarray(ok) * 1e3 if ok else np.zeros(1)
    return {"requests": len(window), "ok": len(ok), "failed": len(window) - len(ok),
            "statuses": statuses,
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "throughput_rps": round(len(ok) / span, 1) if span > 0 else 0.0}
