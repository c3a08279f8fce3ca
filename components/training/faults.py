"""Test hooks into a training run, off unless ``$VITPIPE_FAULTS`` asks for them.

Not settings: a test (or an operator chasing a problem) sets the variable, a JSON object, in
the environment of the driver that calls ``run_training``; the driver reads it once
(:func:`faults_from_env`) and hands the result to every worker in its plan, so it reaches
workers of a cluster started before the variable was set. Keys:

- ``fail_at_step`` (int ≥ 1): rank 0 SIGKILLs its own process once, when it reaches this
  global step; a marker file in the run's storage (``<run>/fault_injected``) keeps the
  restarted worker from killing itself again;
- ``heartbeat`` (bool): each rank writes ``<run>/heartbeat/rank<r>.json`` (pid, step,
  started_at_step, world_size, stop_requested, time) at every log boundary, so a test can
  find the training worker's process and the step it has reached;
- ``step_sleep_s`` (number ≥ 0): each rank sleeps this long after every optimizer step, so a
  run on a fast machine still lasts long enough for a test's fault to land mid-run.

``VITPIPE_FAULTS='{"fail_at_step": 9}'``. An unknown key or a wrong type is a
:class:`components.core.config.ConfigError` naming it, before any worker starts.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass

from components.core.config import ConfigError
from components.training import storage
from components.training.preemption import stop_requested

FAULTS_ENV = "VITPIPE_FAULTS"
FAULT_MARKER = "fault_injected"
HEARTBEAT_DIR = "heartbeat"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Faults:
    """The hooks one run asked for (all off by default), with where they write."""

    fail_at_step: int | None = None  # rank 0 kills itself once at this global step
    marker: str | None = None  # the run's record of that kill (set with fail_at_step)
    heartbeat_dir: str | None = None  # where each rank writes rank<r>.json; None: no heartbeat
    step_sleep_s: float = 0.0  # each rank sleeps this long after every optimizer step

    def __post_init__(self) -> None:
        if (self.fail_at_step is None) != (self.marker is None):
            raise ValueError("Faults: fail_at_step and marker go together")


def faults_from_env(run_dir: str, environ: Mapping[str, str] | None = None) -> Faults:
    """The hooks ``$VITPIPE_FAULTS`` asks for, writing under ``run_dir`` (the run's storage)."""
    text = (os.environ if environ is None else environ).get(FAULTS_ENV, "").strip()
    if not text:
        return Faults()
    try:
        raw = json.loads(text)
    except ValueError as err:
        raise ConfigError(f"${FAULTS_ENV} is not JSON: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"${FAULTS_ENV} must be a JSON object, got {text!r}")
    unknown = sorted(set(raw) - {"fail_at_step", "heartbeat", "step_sleep_s"})
    if unknown:
        raise ConfigError(f"${FAULTS_ENV}: unknown key(s) {', '.join(unknown)}; "
                          "known: fail_at_step, heartbeat, step_sleep_s")
    fail = raw.get("fail_at_step")
    if fail is not None and (isinstance(fail, bool) or not isinstance(fail, int) or fail < 1):
        raise ConfigError(f"${FAULTS_ENV}: fail_at_step must be an integer >= 1, got {fail!r}")
    heartbeat = raw.get("heartbeat", False)
    if not isinstance(heartbeat, bool):
        raise ConfigError(f"${FAULTS_ENV}: heartbeat must be true or false, got {heartbeat!r}")
    sleep = raw.get("step_sleep_s", 0.0)
    if isinstance(sleep, bool) or not isinstance(sleep, (int, float)) or not 0 <= sleep <= 60:
        raise ConfigError(f"${FAULTS_ENV}: step_sleep_s must be a number of seconds in [0, 60], got {sleep!r}")
    return Faults(fail_at_step=fail,
                  marker=storage.join(run_dir, FAULT_MARKER) if fail is not None else None,
                  heartbeat_dir=storage.join(run_dir, HEARTBEAT_DIR) if heartbeat else None,
                  step_sleep_s=float(sleep))


class FaultHooks:
    """One rank's hooks. The loop calls :meth:`at_step` after every optimizer step (an integer
    comparison unless this is the step to fail at) and :meth:`beat` at every log boundary
    (nothing unless the heartbeat is on)."""

    def __init__(self, faults: Faults, *, rank: int, started_at_step: int, world_size: int) -> None:
        self.faults = faults
        self.started_at_step, self.world_size = started_at_step, world_size
        self._fail_at = faults.fail_at_step if rank == 0 else None
        self._beat_path = storage.join(faults.heartbeat_dir, f"rank{rank}.json") if faults.heartbeat_dir else None

    def at_step(self, step: int) -> None:
        """Sleep, if asked; SIGKILL this process at the fault step, once per run (the marker
        says it happened)."""
        if self.faults.step_sleep_s:
            time.sleep(self.faults.step_sleep_s)
        if step != self._fail_at:
            return
        if storage.read_text(self.faults.marker) is not None:
            return
        storage.write_text(self.faults.marker, f"killed at step {step}\n")
        log.warning("fault injection: killing this worker (pid %d) at step %d", os.getpid(), step)
        os.kill(os.getpid(), signal.SIGKILL)

    def beat(self, step: int) -> None:
        """Write this rank's heartbeat (pid, the step reached), if the run asked for it."""
        if self._beat_path is None:
            return
        storage.write_text(self._beat_path, json.dumps({
            "pid": os.getpid(), "step": step, "started_at_step": self.started_at_step,
            "world_size": self.world_size, "stop_requested": stop_requested(), "time": time.time()}))
