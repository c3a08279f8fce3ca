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
    """Prints ``step k/N  epoch e  loss ..  img/s ..  ETA ..`` after each report."""

    def __init__(self, total_steps: int, run_name: str) -> None:
        self.total_steps = total_steps
        self.run_name = run_name
        self._last: tuple[float, int, int] | None = None  # (time, step, samples)

    def line(self, metrics: dict[str, Any], now: float | None = None) -> str | None:
        now = time.monotonic() if now is None else now
        step = int(metrics.get("step", 0))
        samples = int(metrics.get("samples_seen", 0))
        last, self._last = self._last, (now, step, samples)
        if last is None or step <= last[1]:
            rate = float(metrics.get("img_per_s", 0.0))
            step_time = None
        else:
            dt = max(now - last[0], 1e-9)
            rate = (samples - last[2]) / dt
            step_time = dt / (step - last[1])
        parts = [f"[{self.run_name}] step {step}/{self.total_steps}",
                 f"epoch {int(metrics.get('epoch', 0))}"]
        for key in ("train_loss", "val_loss", "val_top1"):
            if key in metrics and abs(float(metrics[key])) < 1e8:  # ±1e9: "no value yet"
                parts.append(f"{key} {float(metrics[key]):.4f}")
        if rate:
            parts.append(f"{rate:.1f} img/s")
        if step_time is not None:
            parts.append(f"ETA {format_eta(step_time * (self.total_steps - step))}")
        return "  ".join(parts)

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        if metrics:
            text = self.line(metrics[0])
            if text:
                print(text, flush=True)
