"""The training step, free of Ray: forward under autocast, loss, backward, accumulation,
clipping, optimizer + scheduler step. Ray Train workers and the bare-step benchmark (and the
GPU run, where Ray is absent) call the same :class:`StepRunner`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from components.models.base import padding_kwargs

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf: training stops instead of corrupting the weights."""


def batch_grid(batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """The patch grid ``(gh, gw)`` of a batch (``grid`` is ``[B, 2]``, equal rows)."""
    grid = batch["grid"]
    return (int(grid[0, 0]), int(grid[0, 1])) if grid.ndim == 2 else (int(grid[0]), int(grid[1]))


def classification_loss(label_smoothing: float = 0.0) -> LossFn:
    """CE on ``model(patches, grid)`` logits ``[B, C]`` against ``label`` ``[B]``."""

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = model(batch["patches"], batch_grid(batch))
        return {"loss_ce": F.cross_entropy(logits.float(), batch["label"],
                                           label_smoothing=label_smoothing)}

    loss_fn.weight_dict = {"loss_ce": 1.0}
    return loss_fn


def detection_loss(criterion: nn.Module) -> LossFn:
    """The set criterion's named terms on the detector's outputs (fp32 for the matcher)."""

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = model(batch["patches"], batch_grid(batch), **padding_kwargs(batch))
        return criterion(_to_float(outputs), batch)

    loss_fn.weight_dict = criterion.weight_dict
    return loss_fn


def model_computes_loss(model: nn.Module) -> bool:
    """Whether a detector trains with its own losses (``model.computes_loss``: the
    transformers detectors) rather than our set criterion; through a DDP ``.module``."""
    return bool(getattr(getattr(model, "module", model), "computes_loss", False))


def model_loss() -> LossFn:
    """The detector's own losses: ``model(patches, grid, targets=...)`` returns ``"loss"``
    (the library's weighted total, the one term that is optimised: ``loss_total``) and
    ``"loss_dict"`` (its named terms, returned detached for logging only)."""
    from components.models.criterion import batch_targets

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = model(batch["patches"], batch_grid(batch), **padding_kwargs(batch),
                        targets=batch_targets(batch))
        terms = {(k if k.startswith("loss_") else f"loss_{k}"): v.detach().float()
                 for k, v in outputs["loss_dict"].items() if isinstance(v, torch.Tensor) and v.numel() == 1}
        return {**terms, "loss_total": outputs["loss"].float()}

    loss_fn.weight_dict = {"loss_total": 1.0}
    return loss_fn


def _to_float(outputs):
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    if isinstance(outputs, dict):
        return {k: _to_float(v) for k, v in outputs.items()}
    if isinstance(outputs, list):
        return [_to_float(v) for v in outputs]
    return outputs


def weighted_total(losses: dict[str, torch.Tensor], weight_dict: dict[str, float]) -> torch.Tensor:
    return sum(losses[k] * w for k, w in weight_dict.items() if k in losses)


@dataclass
class StepRunner:
    """One optimizer step = ``grad_accum_steps`` micro-steps.

    ``micro_step(batch)`` returns the detached loss terms of that micro-batch plus
    ``loss`` (weighted total) and, on the last micro-step, ``grad_norm`` and ``lr``; it
    returns ``stepped=True`` when the optimizer stepped.
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
    _micro: int = 0

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def micro_step(self, batch: dict[str, torch.Tensor], *, step: int = -1) -> dict[str, torch.Tensor]:
        self.model.train()
        last = self._micro + 1 == self.grad_accum_steps
        sync = contextlib.nullcontext()
        if not last and hasattr(self.model, "no_sync"):
            sync = self.model.no_sync()  # DDP: all-reduce gradients on the last micro-step only
        with sync:
            with self.autocast():
                losses = self.loss_fn(self.model, batch)
            total = weighted_total(losses, self.loss_fn.weight_dict)
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
        self.scheduler.step()
        out["stepped"] = torch.tensor(True)
        return out
