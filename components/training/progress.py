"""Training progress in the terminal: one line per run (step/total, img/s, ETA, latest metric).

Ray Train V2 runs a ``UserCallback`` on its controller actor, not in the driver. The
:class:`ProgressCallback` there turns each report into a :class:`Tick` and, when the driver
has a :class:`LiveProgress` open (the pipelines open one around their runs), hands it over
through a Ray queue; the driver draws it:

- ``tty``: one line per run, redrawn in place (carriage return);
- ``plain``: a line at the first report, every ``interval_s`` seconds or 10 % of the steps,
  and at the last step (a log file, ``ray job submit``'s stream);
- ``every``: a line per report (for a reader that draws the lines itself).

``auto`` (the default) is ``tty`` on a terminal and ``plain`` elsewhere; the environment
variable ``VITPIPE_PROGRESS`` picks one. With no ``LiveProgress`` open (a Tune trial, a
library call) the controller prints one line per report, which Ray forwards to the driver.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from ray.train import UserCallback

MODES = ("auto", "tty", "plain", "every")
ENV_MODE = "VITPIPE_PROGRESS"
SHOWN_METRICS = ("train_loss", "val_loss", "val_top1", "val_map")  # the latest of each is shown


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


@dataclass(frozen=True)
class Tick:
    """One run's progress at one report: what a progress line shows."""

    run_name: str
    step: int
    total: int
    epoch: int
    img_per_s: float = 0.0
    eta_s: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        pct = f" ({100 * self.step // self.total}%)" if self.total else ""
        parts = [f"[{self.run_name}] step {self.step}/{self.total}{pct}"]
        if self.img_per_s:
            parts.append(f"{self.img_per_s:.1f} img/s")
        if self.eta_s is not None:
            parts.append(f"ETA {format_eta(self.eta_s)}")
        parts += [f"{key} {value:.4f}" for key, value in self.metrics.items()]
        parts.append(f"epoch {self.epoch}")  # last: what a narrow terminal cuts off
        return "  ".join(parts)


class ProgressState:
    """Reports of one run → ticks.

    Times come from the report's ``reported_at`` (the worker's clock) when it has one, so
    reports the controller reads in a burst still give the throughput between them. img/s is
    that of the last interval; the ETA uses the mean step time since the first report of
    this attempt (validation and checkpoints included), so it does not swing with them.
    """

    def __init__(self, total_steps: int, run_name: str) -> None:
        self.total_steps = total_steps
        self.run_name = run_name
        self._first: tuple[float, int] | None = None  # (time, step) of this attempt's first report
        self._last: tuple[float, int, int] | None = None  # (time, step, samples)
        self._latest: dict[str, float] = {}

    def tick(self, metrics: dict[str, Any], now: float | None = None) -> Tick:
        if now is None:
            stamp = metrics.get("reported_at")
            now = time.time() if stamp is None else float(stamp)
        step = int(metrics.get("step", 0))
        samples = int(metrics.get("samples_seen", 0))
        last, self._last = self._last, (now, step, samples)
        if last is None or step <= last[1] or now <= last[0]:  # first report, or a restart
            self._first = (now, step)
            rate = float(metrics.get("img_per_s", 0.0))
        else:
            rate = (samples - last[2]) / (now - last[0])
        for key in SHOWN_METRICS:
            if key in metrics and abs(float(metrics[key])) < 1e8:  # ±1e9: "no value yet"
                self._latest[key] = float(metrics[key])
        first_t, first_step = self._first
        eta = None
        if step > first_step:
            eta = (now - first_t) / (step - first_step) * (self.total_steps - step)
        return Tick(self.run_name, step, self.total_steps, int(metrics.get("epoch", 0)), rate, eta,
                    dict(self._latest))


class ProgressCallback(UserCallback):
    """After each report: a :class:`Tick` to the driver's :class:`LiveProgress`, or a printed line.

    Built in the driver (where it finds the open ``LiveProgress``), pickled to the controller.
    """

    def __init__(self, total_steps: int, run_name: str) -> None:
        self.state = ProgressState(total_steps, run_name)
        self.sink = _ACTIVE.channel() if _ACTIVE is not None else None

    def line(self, metrics: dict[str, Any], now: float | None = None) -> str:
        return self.state.tick(metrics, now).line()

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if not metrics:
            return
        tick = self.state.tick(metrics[0])
        if self.sink is not None:
            try:
                self.sink.put(asdict(tick), timeout=10)
                return
            except Exception:  # noqa: BLE001 - the driver's display is gone: print instead
                self.sink = None
        print(tick.line(), flush=True)


# ----------------------------------------------------------------------------- driver side
_ACTIVE: LiveProgress | None = None


def resolve_mode(mode: str | None, stream: TextIO) -> str:
    mode = mode or os.environ.get(ENV_MODE) or "auto"
    if mode not in MODES:
        raise ValueError(f"{ENV_MODE}={mode!r}: expected one of {', '.join(MODES)}")
    if mode == "auto":
        isatty = getattr(stream, "isatty", None)
        return "tty" if isatty is not None and isatty() else "plain"
    return mode


class LiveProgress:
    """The driver's progress display: ``with LiveProgress() as live: run_training(...)``.

    :meth:`show` draws a tick (from any thread); :meth:`say` prints a message line (ending an
    open progress line first); :meth:`flush` draws every tick the controllers have sent, so a
    stage's last line comes before its result. One may be open per process.
    """

    def __init__(self, stream: TextIO | None = None, mode: str | None = None, interval_s: float = 10.0) -> None:
        self.stream = stream or sys.stdout
        self.mode = resolve_mode(mode, self.stream)
        self.interval_s = interval_s
        self._lock = threading.RLock()
        self._open: str | bool = False  # the run whose tty line waits for its newline
        self._last: dict[str, tuple[float, int]] = {}  # run → (time printed, tenth printed)
        self._queue = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def __enter__(self) -> LiveProgress:
        global _ACTIVE
        if _ACTIVE is not None:
            raise RuntimeError("a LiveProgress is already open in this process")
        _ACTIVE = self
        return self

    def __exit__(self, *exc) -> None:
        global _ACTIVE
        _ACTIVE = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()
        if self._queue is not None:
            try:
                self._queue.shutdown()
            except Exception:  # noqa: BLE001 - Ray already shut down
                pass

    # the channel controllers send to ------------------------------------------------------
    def channel(self):
        """The Ray queue the callbacks put ticks on (made on first use: Ray is up by then)."""
        with self._lock:
            if self._queue is None:
                from ray.util.queue import Queue

                self._queue = Queue(maxsize=1000, actor_options={"num_cpus": 0})
                self._thread = threading.Thread(target=self._pump, name="vitpipe-progress", daemon=True)
                self._thread.start()
            return self._queue

    def _pump(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            with self._lock:  # held while waiting, so flush() never misses an item in flight
                try:
                    item = self._queue.get(timeout=0.2)
                except Empty:
                    item = None
                except Exception:  # noqa: BLE001 - Ray is shutting down
                    return
                if item is not None:
                    self.show(Tick(**item))
            time.sleep(0.01)

    def flush(self) -> None:
        with self._lock:
            while self._queue is not None:
                try:
                    if self._queue.empty():
                        break
                    self.show(Tick(**self._queue.get_nowait()))
                except Exception:  # noqa: BLE001 - empty, or Ray shut down
                    break
            self.end_line()

    # drawing --------------------------------------------------------------------------------
    def show(self, tick: Tick, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            if self.mode == "tty":
                if self._open and self._open != tick.run_name:
                    self._write("\n")  # another run: its own line
                width = shutil.get_terminal_size().columns - 1  # a wrapped line is not redrawn in place
                self._write(f"\r{tick.line()[:width]}\x1b[K")
                self._open = tick.run_name
                return
            tenth = 10 * tick.step // tick.total if tick.total else 0
            last = self._last.get(tick.run_name)
            due = (self.mode == "every" or last is None or tick.step >= tick.total
                   or now - last[0] >= self.interval_s or tenth > last[1])
            if due:
                self._last[tick.run_name] = (now, tenth)
                self._write(tick.line() + "\n")

    def say(self, text: str) -> None:
        with self._lock:
            self.end_line()
            self._write(text + "\n")

    def end_line(self) -> None:
        with self._lock:
            if self._open:
                self._write("\n")
                self._open = False

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
