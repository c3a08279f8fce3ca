"""Size and cost of registered models: parameters and forward FLOPs, counted on the meta device.

No weights are allocated: the model is built under ``torch.device("meta")`` and a meta input
of the default resolution runs through it under ``FlopCounterMode``, so even ViT-H costs
milliseconds. FLOPs are counted as 2 × multiply-accumulates (papers' "GFLOPs" for ViTs are
usually MACs; ``gmacs`` gives that number). Models whose forward pass needs real values
(the transformers detectors read tensor values with ``.item()``) cannot run on the meta
device: their ``gflops`` / ``gmacs`` are ``None``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from components.models.base import to_2tuple
from components.models.registry import build_model, get_spec, list_models


@dataclass(frozen=True)
class ModelSummary:
    name: str
    task: str
    params: int
    gflops: float | None
    gmacs: float | None
    img_size: list[int]
    patch_size: int
    description: str

    def to_dict(self) -> dict:
        return asdict(self)


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: torch.nn.Module, img_size: int | tuple[int, int], batch: int = 1) -> int:
    """FLOPs of one forward pass of ``batch`` images through ``forward_images``."""
    h, w = to_2tuple(img_size)
    device = next(model.parameters()).device
    images = torch.zeros(batch, 3, h, w, device=device)
    model.requires_grad_(False)  # (no_grad trips FlopCounterMode's module tracker)
    counter = FlopCounterMode(display=False)
    with counter:
        model.forward_images(images)
    return int(counter.get_total_flops())


def summarize(name: str, **overrides) -> ModelSummary:
    """Parameters and GFLOPs of ``name`` at its default resolution (built on the meta device)."""
    spec = get_spec(name)
    with torch.device("meta"):
        model = build_model(name, **overrides).eval()
        try:
            flops = forward_flops(model, model.img_size)
        except RuntimeError:  # data-dependent code: no FLOP count without real weights
            flops = None
    return ModelSummary(
        name=name, task=spec.task, params=count_params(model),
        gflops=None if flops is None else round(flops / 1e9, 3),
        gmacs=None if flops is None else round(flops / 2e9, 3), img_size=list(to_2tuple(model.img_size)),
        patch_size=model.patch_size, description=spec.description,
    )


def summarize_all(task: str | None = None) -> list[ModelSummary]:
    return [summarize(n) for n in list_models(task)]
