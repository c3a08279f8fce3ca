"""The seconds of fitting a run has spent (``Progress.train_seconds``) and its time budget
(``run.max_seconds``).

The clock runs from the first step's start and is paused while the run validates and
writes checkpoints. It is read after each optimizer step, before the scheduler computes the
next step's learning rate, so a cosine annealed to the budget (``optim.anneal_to_budget``)
follows the seconds up to the step just taken. Rank 0's clock decides: every rank stops
after the same step and computes the same learning rate.
"""

from __future__ import annotations

import time

import torch

from components.tasks.base import all_reduce_sum
from components.training.optim import BudgetClock
from components.training.state import Progress


class FitClock:
    """``start()`` before a step, ``tick()`` after its optimizer step, ``resume()`` after a
    pause (validation, checkpoint). ``out_of_time`` turns true at the first step that ends
    past the budget."""

    def __init__(self, progress: Progress, *, budget_s: float | None, schedule_clock: BudgetClock,
                 rank: int, world: int, device: torch.device) -> None:
        self.progress = progress
        self.budget_s = budget_s
        self.schedule_clock = schedule_clock
        self.rank, self.world, self.device = rank, world, device
        self.out_of_time = False
        self._since: float | None = None  # perf_counter at the last accounted moment; None: not started
        schedule_clock.update(progress.train_seconds)  # a resumed run goes on from its checkpoint's seconds

    def start(self) -> None:
        if self._since is None:
            self._since = time.perf_counter()

    def resume(self) -> None:
        if self._since is not None:
            self._since = time.perf_counter()

    def tick(self) -> None:
        now = time.perf_counter()
        self.progress.train_seconds += now - (self._since if self._since is not None else now)
        self._since = now
        if self.budget_s is None:
            return
        spent = self._rank0_seconds()
        self.schedule_clock.update(spent)
        self.out_of_time = spent >= self.budget_s

    def _rank0_seconds(self) -> float:
        """One 1-element all-reduce a step when several ranks train (each rank's own clock
        could otherwise disagree on the step the budget ends at, or on the learning rate)."""
        seconds = self.progress.train_seconds
        if self.world == 1:
            return seconds
        mine = torch.tensor([seconds if self.rank == 0 else 0.0], dtype=torch.float64)
        return float(all_reduce_sum(mine, self.device)[0])
