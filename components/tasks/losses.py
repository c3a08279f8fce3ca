"""Loss functions of the tasks: ``loss_fn(model, batch) -> {term: scalar}`` with a fixed
``loss_fn.weight_dict`` (term → weight, set here once); ``components.models.criterion.total_loss``
totals them everywhere (training step, in-loop validation, tests).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from components.core.batch import batch_grid
from components.models.base import padding_kwargs

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def classification_loss(label_smoothing: float = 0.0) -> LossFn:
    """CE on ``model(patches, grid)`` logits ``[B, C]`` against ``label`` ``[B]``."""

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = model(batch["patches"], batch_grid(batch))
        return {"loss_ce": F.cross_entropy(logits.float(), batch["label"],
                                           label_smoothing=label_smoothing)}

    loss_fn.weight_dict = {"loss_ce": 1.0}
    return loss_fn


def detection_loss(criterion: nn.Module) -> LossFn:
    """The set criterion's named terms on the detector's outputs (fp32 for the matcher);
    weights: the criterion's base terms (auxiliary terms take their base term's)."""

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = model(batch["patches"], batch_grid(batch), **padding_kwargs(batch))
        return criterion(_to_float(outputs), batch)

    loss_fn.weight_dict = dict(criterion.weight_dict)
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


def mae_loss() -> LossFn:
    """``{"loss_recon"}``: the MAE computes its masked-patch loss in its forward (under DDP
    the wrapped module must run it); labels/boxes are ignored."""

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss_recon": model(batch["patches"], batch_grid(batch))["loss_recon"]}

    loss_fn.weight_dict = {"loss_recon": 1.0}
    return loss_fn


def _to_float(outputs):
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    if isinstance(outputs, dict):
        return {k: _to_float(v) for k, v in outputs.items()}
    if isinstance(outputs, list):
        return [_to_float(v) for v in outputs]
    return outputs
