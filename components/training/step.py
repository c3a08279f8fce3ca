"""The training step, free of Ray: forward under autocast, the task's loss
(``components.tasks``), backward, accumulation, clipping, optimizer + scheduler step. Ray
Train workers and the bare-step benchmark (and the GPU run, where Ray is absent) call the
same :class:`StepRunner`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from components.core.device import autocast
from components.models.criterion import total_loss
from components.tasks.losses import LossFn


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf: training stops instead of corrupting the weights."""


@dataclass
class StepRunner:
    """One optimizer step = ``grad_accum_steps`` micro-steps.

    ``micro_step(batch)`` returns the detached loss terms of that micro-batch plus ``loss``
    (their total: ``components.models.criterion.total_loss``) and, on the last micro-step,
    ``grad_norm`` and ``lr``; it returns ``stepped=True`` when the optimizer stepped.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: LossFn
    device: torch.device
    amp_dtype: torch.dtype | None = None
    grad_accum_steps: int = 1
    clip_grad_norm: float = 0.0
    scaler: torch.amp.GradScaler | None = None
    check_finite: bool = True
    # Called after each optimizer step, before the scheduler computes the next step's lr
    # (the training loop's time-budget clock reads that step's seconds there).
    on_optimizer_step: Callable[[], None] | None = None
    _micro: int = 0

    def autocast(self):
        return autocast(self.device, self.amp_dtype)

    def micro_step(self, batch: dict[str, torch.Tensor], *, step: int = -1) -> dict[str, torch.Tensor]:
        self.model.train()
        last = self._micro + 1 == self.grad_accum_steps
        sync = contextlib.nullcontext()
        if not last and hasattr(self.model, "no_sync"):
            sync = self.model.no_sync()  # DDP: all-reduce gradients on the last micro-step only
        with sync:
            with self.autocast():
                losses = self.loss_fn(self.model, batch)
            total = total_loss(losses, self.loss_fn.weight_dict)
            if self.check_finite and not torch.isfinite(total).item():
                terms = {k: float(v.detach()) for k, v in losses.items()}
                raise NonFiniteLossError(
                    f"non-finite loss {float(total.detach())} at step {step} (terms {terms}); stopping. "
                    "Lower optim.lr, raise optim.warmup_steps, or use precision=fp32/bf16."
                )
            scaled = total / self.grad_accum_steps
            if self.scaler is not None:
                self.scaler.scale(scaled).backward()
            else:
                scaled.backward()
        out = {k: v.detach() for k, v in losses.items()}
        out["loss"] = total.detach()
        self._micro += 1
        if not last:
            out["stepped"] = torch.tensor(False)
            return out
        self._micro = 0
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.clip_grad_norm > 0:
            out["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm).detach()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        out["lr"] = torch.tensor(self.optimizer.param_groups[-1]["lr"])
        if self.on_optimizer_step is not None:
            self.on_optimizer_step()
        self.scheduler.step()
        out["stepped"] = torch.tensor(True)
        return out
