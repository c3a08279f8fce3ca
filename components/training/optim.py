"""AdamW with parameter groups (no decay on norms/biases/tokens, layer-wise lr decay) and a
linear-warmup + cosine schedule expressed as a pure function of the step (and, for a run with
a time budget, of the fraction of the budget spent: :class:`BudgetClock`).
"""

from __future__ import annotations

import math
import re
from typing import Iterable

import torch
from torch import nn

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # no pydantic needed at run time (the GPU bench machine lacks it)
    from components.training.config import OptimSection

_BLOCK_INDEX = re.compile(r"(?:^|\.)(?:blocks|layers|layer|stages)\.(\d+)\.")
_EMBED_NAMES = ("patch_embed", "pos_embed", "cls_token", "dist_token", "reg_token",
                "det_token", "mask_token", "embed")
_NO_DECAY_HINTS = ("pos_embed", "cls_token", "dist_token", "reg_token", "det_token",
                   "mask_token", "query_embed", "relative_position")


# Detection parts a classification checkpoint never has: they train at the full lr, like a
# head (YOLOS' [DET] tokens and their position embeddings, the class/box MLPs, whose
# ``layers.<i>`` would otherwise read as transformer blocks).
_FRESH_DETECTION_PARTS = ("det_token", "det_pos_embed", "mid_det_pos_embed", "class_embed", "bbox_embed")


def layer_id(name: str, num_layers: int) -> int:
    """Depth of parameter ``name``: 0 for embeddings, ``i + 1`` for block ``i``, then the head.

    ``num_layers`` is the number of blocks; head/final norm (and a detector's fresh parts)
    get ``num_layers + 1``.
    """
    name = name.removeprefix("module.")
    if name.split(".")[0] in _FRESH_DETECTION_PARTS:
        return num_layers + 1
    match = _BLOCK_INDEX.search(name)
    if match:
        return int(match.group(1)) + 1
    if name.split(".")[0] in _EMBED_NAMES or any(h in name for h in _EMBED_NAMES[:6]):
        return 0
    return num_layers + 1


def count_layers(names: Iterable[str]) -> int:
    found = [int(m.group(1)) for n in names
             if n.removeprefix("module.").split(".")[0] not in _FRESH_DETECTION_PARTS
             and (m := _BLOCK_INDEX.search(n))]
    return max(found) + 1 if found else 0


def param_groups(model: nn.Module, cfg: OptimSection) -> list[dict]:
    """AdamW groups: ``weight_decay`` only on matrices, lr scaled by ``layer_decay ** depth``.

    Each group carries ``lr_scale``; the scheduler multiplies it into the group's lr.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    num_layers = count_layers(n for n, _ in named)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in named:
        no_decay = param.ndim <= 1 or any(h in name for h in _NO_DECAY_HINTS)
        depth = layer_id(name, num_layers) if cfg.layer_decay < 1.0 else num_layers + 1
        scale = cfg.layer_decay ** (num_layers + 1 - depth)
        key = (depth, no_decay)
        group = groups.setdefault(key, {
            "params": [], "names": [], "lr_scale": scale,
            "weight_decay": 0.0 if no_decay else cfg.weight_decay,
        })
        group["params"].append(param)
        group["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, cfg: OptimSection, *, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`. ``fused=None``: torch's default implementation."""
    groups = param_groups(model, cfg)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    names = [g.pop("names") for g in groups]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas),
                                  weight_decay=cfg.weight_decay, fused=fused)
    optimizer.vitpipe_group_names = names  # for debugging / tests only
    return optimizer


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str,
              min_lr_ratio: float, budget_spent: float = 0.0) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based).

    After the warmup the cosine's progress is the larger of the steps' share of the planned
    ones and ``budget_spent`` (the share of a time budget used, 0 without one), so a run
    boxed by time reaches ``min_lr_ratio`` as its budget runs out on any machine.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span, budget_spent))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class BudgetClock:
    """The share of a run's time budget (``run.max_seconds``) spent so far, in [0, 1], that
    the scheduler reads at each step. The training loop sets it from rank 0's clock, so every
    rank computes the same learning rate."""

    def __init__(self, budget_s: float | None) -> None:
        self.budget_s = budget_s
        self.spent = 0.0

    def update(self, train_seconds: float) -> None:
        if self.budget_s:
            self.spent = min(1.0, max(0.0, train_seconds / self.budget_s))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimSection, total_steps: int,
                    clock: BudgetClock | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` over every group (the groups' ``lr_scale`` is already in their base lr).
    ``clock``: a time-boxed run's budget, which the cosine also follows (:func:`lr_factor`)."""

    def factor(step: int) -> float:
        return lr_factor(step, total_steps=total_steps, warmup_steps=cfg.warmup_steps,
                         schedule=cfg.schedule, min_lr_ratio=cfg.min_lr_ratio,
                         budget_spent=clock.spent if clock is not None else 0.0)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
