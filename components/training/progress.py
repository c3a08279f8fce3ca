"""Driver-side progress: throughput (img/s) and ETA from the workers' reports.

A Ray Train ``UserCallback`` runs on the train controller; its log lines reach the driver's
console. Workers report every ``run.log_every_n_steps`` steps, so the console gets one line
per report, never one per step or per worker.
"""

from __future__ import annotations

import time
from typing import Any

from ray.train import UserCallback


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class ProgressCallback(UserCallback):
    """Prints ``step k/N  epoch e  loss ..  img/s ..  ETA ..`` after each report.

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

    def line(self, metrics: dict[str, Any], now: float | None = None) -> str | None:
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
        parts = [f"[{self.run_name}] step {step}/{self.total_steps}",
                 f"epoch {int(metrics.get('epoch', 0))}"]
        for key in ("train_loss", "val_loss", "val_top1"):
            if key in metrics and abs(float(metrics[key])) < 1e8:  # ±1e9: "no value yet"
                parts.append(f"{key} {float(metrics[key]):.4f}")
        if rate:
            parts.append(f"{rate:.1f} img/s")
        first_t, first_step = self._first
        if step > first_step:
            step_time = (now - first_t) / (step - first_step)
            parts.append(f"ETA {format_eta(step_time * (self.total_steps - step))}")
        return "  ".join(parts)

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if metrics:
            text = self.line(metrics[0])
            if text:
                print(text, flush=True)
